package router

import (
	"errors"
	"strings"
	"time"
)

// Config configures the router stage.
type Config struct {
	// ServerName is our server name: only events originating here are routed,
	// and it is never a destination.
	ServerName string
	// Prefix is the topic prefix; the router reads <Prefix>.room. Default "fedpipe".
	Prefix string
	// Instance names this process in the instance header of the records it writes.
	// Default "router".
	Instance string
	// RoomsPerPartition bounds the rooms whose membership a partition keeps
	// in memory; beyond it the least recently used are dropped and loaded
	// again from PostgreSQL when next seen. Default DefaultRoomsPerPartition.
	RoomsPerPartition int
	// Brokers and GroupID name the Kafka cluster and the router's consumer
	// group. Presence is routed only once the group has handled every room
	// record before it (roomBarrier), read from the group's committed offsets.
	// Without Brokers presence is routed against whatever membership is
	// stored: only tests of the routing rules alone leave it empty.
	Brokers []string
	GroupID string
	// OutboundPartitions is the partition count of <prefix>.outbound: a PDU
	// goes out as one record per partition its destinations fall in (see
	// pduRecords). Zero: one record per destination. It must be the topic's
	// real count, as the writer's balancer and the sender count them: after
	// partitions are added, routers and senders restart.
	OutboundPartitions int
	// TypingPing is how often a user still typing is announced again
	// (default TypingPing, Synapse's 40 s); TypingTick how often typing
	// timeouts are checked (default TypingTick, 1 s). Tests shorten them.
	TypingPing, TypingTick time.Duration
}

// DefaultGroupID is Config.GroupID when it is empty.
const DefaultGroupID = "fedpipe-router"

// DefaultRoomsPerPartition is Config.RoomsPerPartition when it is zero.
const DefaultRoomsPerPartition = 10_000

// DefaultPrefix is the topic prefix when Config.Prefix is empty.
const DefaultPrefix = "fedpipe"

func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.Instance == "" {
		c.Instance = "router"
	}
	if c.GroupID == "" {
		c.GroupID = DefaultGroupID
	}
	if c.RoomsPerPartition == 0 {
		c.RoomsPerPartition = DefaultRoomsPerPartition
	}
	if c.TypingPing == 0 {
		c.TypingPing = TypingPing
	}
	if c.TypingTick == 0 {
		c.TypingTick = TypingTick
	}
	return c
}

// Validate reports the first setting that cannot work, after defaults.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.ServerName == "":
		return errors.New("router: server name is required")
	case strings.ContainsAny(c.ServerName, " \t\r\n/@"):
		return errors.New("router: server name must be a bare host[:port]")
	case strings.ContainsAny(c.Prefix, " \t\r\n"):
		return errors.New("router: topic prefix must not contain whitespace")
	case c.OutboundPartitions < 0:
		return errors.New("router: outbound partitions must not be negative")
	case c.RoomsPerPartition < 1:
		return errors.New("router: rooms per partition must be positive")
	case c.TypingPing < 0 || c.TypingTick < 0:
		return errors.New("router: typing intervals must be positive")
	}
	return nil
}
