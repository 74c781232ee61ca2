package router

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fedpipe/fedpipe/schema"
)

// Config configures the router stage.
type Config struct {
	// ServerName is our server name: only events originating here are routed,
	// and it is never a destination.
	ServerName string
	// Prefix is the topic prefix; the router reads <Prefix>.room. Default DefaultPrefix.
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
	// GroupID defaults to DefaultGroupID.
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
const DefaultPrefix = schema.DefaultPrefix

// Validate fills the defaults of zero fields and reports every invalid
// field, each by name.
func (c *Config) Validate() error {
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
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("router: "+format, args...)) }
	switch {
	case c.ServerName == "":
		bad("ServerName must be set")
	case strings.ContainsAny(c.ServerName, " \t\r\n/@"):
		bad("ServerName %q must be a bare host[:port]", c.ServerName)
	}
	if strings.ContainsAny(c.Prefix, " \t\r\n") {
		bad("Prefix (the topic prefix) %q must not contain whitespace", c.Prefix)
	}
	if c.OutboundPartitions < 0 {
		bad("OutboundPartitions must not be negative, got %d", c.OutboundPartitions)
	}
	if c.RoomsPerPartition < 1 {
		bad("RoomsPerPartition must be positive, got %d", c.RoomsPerPartition)
	}
	if c.TypingPing < 0 {
		bad("TypingPing must not be negative, got %s", c.TypingPing)
	}
	if c.TypingTick < 0 {
		bad("TypingTick must not be negative, got %s", c.TypingTick)
	}
	return errors.Join(errs...)
}
