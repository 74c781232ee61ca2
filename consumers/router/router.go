// Package router is the fedpipe-router stage: a consumer-group stage over
// <prefix>.room that keeps every room's joined servers from its membership
// deltas (stored in PostgreSQL, replay-safe) and writes one <prefix>.outbound
// pdu record per (locally originated event, destination). The rules live in
// federation/routing; this package is the Kafka and PostgreSQL side of them.
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/schema"
)

// Writer writes records to <prefix>.outbound and calls done once the broker has
// acknowledged all of them, in order (runtime.BatchWriter). Records whose ctx
// has ended before they are written are dropped; Settle returns once nothing
// written before it is still on its way to the broker.
type Writer interface {
	Write(ctx context.Context, msgs []kafka.Message, done func()) error
	Settle(ctx context.Context) error
}

// Router is the stage: runtime.New(cfg, router, ...) runs it in a consumer group.
// It owns no loop of its own; the Writer's Run and the group's Run are the
// caller's to supervise.
type Router struct {
	cfg     Config
	store   store
	out     Writer
	log     *slog.Logger
	m       metrics
	barrier *roomBarrier // nil without Config.Brokers
	// partitionOf is a destination's outbound partition; nil without
	// Config.OutboundPartitions (one record per destination).
	partitionOf func(dest string) int
}

// New returns a router writing through out.
func New(cfg Config, pool *pgxpool.Pool, out Writer, logger *slog.Logger, reg prometheus.Registerer) (*Router, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if pool == nil || out == nil || logger == nil {
		return nil, errors.New("router: pool, writer and logger are required")
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	r := &Router{cfg: cfg, store: store{pool}, out: out, log: logger, m: m}
	if cfg.OutboundPartitions > 0 {
		r.partitionOf = kafkaio.Partitioner(cfg.OutboundPartitions)
	}
	if len(cfg.Brokers) > 0 {
		r.barrier = &roomBarrier{client: &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Timeout: 10 * time.Second},
			group: cfg.GroupID, topic: schema.Topic(cfg.Prefix, "room"), poll: 20 * time.Millisecond}
	}
	return r, nil
}

// Open starts handling one partition of <prefix>.room. Its rooms are loaded
// from PostgreSQL when first seen, since the partition may have been handled by
// another member until now.
func (r *Router) Open(_ context.Context, topic string, partition int) (runtime.PartitionHandler, error) {
	switch topic {
	case schema.Topic(r.cfg.Prefix, "room"):
		return newPartitionHandler(r, topic, partition), nil
	case schema.Topic(r.cfg.Prefix, "presence"):
		h := &presenceHandler{r: r, topic: topic, partition: partition}
		h.batch = runtime.Batch[*schema.PresenceState]{Max: maxPresenceBatch, Flush: h.flush}
		return h, nil
	case schema.Topic(r.cfg.Prefix, "todevice"):
		return &toDeviceHandler{r: r}, nil
	case schema.Topic(r.cfg.Prefix, "typing"):
		return newTypingHandler(r), nil
	case schema.Topic(r.cfg.Prefix, "devicelists"):
		return newDeviceListHandler(r), nil
	case schema.Topic(r.cfg.Prefix, "receipts"):
		return newReceiptHandler(r), nil
	}
	return nil, fmt.Errorf("router: asked to handle topic %s, it routes the room, presence, todevice, typing, devicelists and receipts topics under prefix %s", topic, r.cfg.Prefix)
}

type metrics struct {
	records             *prometheus.CounterVec
	outbound            prometheus.Counter
	rooms               prometheus.Gauge
	destinations        prometheus.Histogram
	changes             prometheus.Counter
	rewinds             prometheus.Counter
	evicted             prometheus.Counter
	presence            *prometheus.CounterVec
	presenceDests       prometheus.Histogram
	presenceBatch       prometheus.Histogram
	presenceRoute       prometheus.Histogram
	presenceOrder       prometheus.Histogram
	toDevice            *prometheus.CounterVec
	typing              *prometheus.CounterVec
	typingTimerFailures prometheus.Counter
	deviceLists         *prometheus.CounterVec
	receipts            *prometheus.CounterVec
	receiptWalkFailures prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	m := metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedpipe_router_records_total", Help: "Room records routed, by kind (event, state_delta).",
		}, []string{"kind"}),
		outbound: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedpipe_router_outbound_records_total", Help: "Outbound pdu records written (one per event and outbound partition its destinations fall in).",
		}),
		rooms: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fedpipe_router_rooms_cached", Help: "Rooms whose membership is held in memory by this process.",
		}),
		destinations: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "fedpipe_router_destinations_per_event", Help: "Destinations of each locally originated event.",
			Buckets: []float64{0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512},
		}),
		changes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedpipe_router_membership_changes_stored_total", Help: "Changes of a user's joined-ness stored in PostgreSQL.",
		}),
		rewinds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedpipe_router_replay_rewinds_total", Help: "Replayed events whose room state was rebuilt from the stored history.",
		}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedpipe_router_rooms_evicted_total", Help: "Rooms dropped from memory, least recently used first, to keep each partition within its bound.",
		}),
		presence: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedpipe_router_presence_records_total",
			Help: "Outbound presence records written, by cause (change, server_join, local_join); not_local counts presence records of remote users, skipped.",
		}, []string{"cause"}),
		presenceDests: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "fedpipe_router_presence_destinations", Help: "Remote servers sharing a room with a local user whose presence changed.",
			Buckets: []float64{0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024},
		}),
		presenceBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "fedpipe_router_presence_batch_records", Help: "Presence records routed together (one destination query, one outbound record per destination).",
			Buckets: []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000},
		}),
		presenceRoute: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "fedpipe_router_presence_route_seconds", Help: "Time to route a batch of presence records (destination query and building the records; not the broker's acknowledgement).",
			Buckets: prometheus.DefBuckets,
		}),
		presenceOrder: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "fedpipe_router_presence_ordering_wait_seconds", Help: "Time a presence batch waited for the router group to handle the room records before it (membership at least as new as the presence).",
			Buckets: prometheus.DefBuckets,
		}),
		toDevice: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedpipe_router_to_device_records_total",
			Help: "To-device records handled, by result: routed to the outbound topic, or ours (addressed to our own server: left to the homeserver).",
		}, []string{"result"}),
		typing: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedpipe_router_typing_records_total",
			Help: "Outbound m.typing EDU records written (one per notification and destination), by typing (true, false).",
		}, []string{"typing"}),
		typingTimerFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedpipe_router_typing_timer_failures_total",
			Help: "Typing timeouts and 40 s re-announcements that could not be written (remote servers time typing users out themselves).",
		}),
		deviceLists: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedpipe_router_device_list_records_total",
			Help: "Device-list records: routed counts outbound records written (one per update and server sharing a room with the user); not_local counts updates of remote users, skipped.",
		}, []string{"result"}),
		receipts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedpipe_router_receipt_records_total",
			Help: "Outbound receipt records written, by path: at_once (small room, recent event, or the event sender's server) or paced (a room's waiting receipts, its servers one after the other).",
		}, []string{"path"}),
		receiptWalkFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedpipe_router_receipt_walk_failures_total",
			Help: "Paced sends of a room's waiting receipts that failed (their records are routed again after a restart).",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.receipts, m.receiptWalkFailures, m.deviceLists, m.typing, m.typingTimerFailures, m.records, m.outbound, m.rooms, m.destinations, m.changes, m.rewinds, m.evicted, m.presence, m.presenceDests, m.presenceBatch, m.presenceRoute, m.presenceOrder, m.toDevice} {
			if err := reg.Register(c); err != nil {
				return m, fmt.Errorf("router: registering metrics: %w", err)
			}
		}
	}
	return m, nil
}
