// Package sender is the fedpipe-sender stage: it consumes <prefix>.outbound
// (partitioned by destination) and feeds each record to its destination's queue
// (federation/queue). A record's offset is committed once its PDU was delivered
// or recorded for catch-up, its EDU delivered or dropped (destination backing
// off), and its presence states delivered, dropped, or replaced by a later
// record's state of the same user. When a partition is revoked, the queues of its
// destinations are stopped and their in-flight transactions finish before the
// next owner starts (cancelled at the drain deadline, which is well before the
// group's rebalance timeout), and each destination's worker holds the
// destination's fence (a PostgreSQL advisory lock, see Fence) while it sends:
// two members never send to one destination at once, even when the group
// expired a member that is still sending.
package sender

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/presence"
	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/schema"
)

// Config configures the stage.
type Config struct {
	// Queue configures the destination queues (Origin is required; its
	// Validate fills the rest).
	Queue queue.Config
	// OutboundPartitions is the partition count of the outbound topic, to tell
	// which destinations this member owns (murmur2 of the destination, as the
	// router partitions them). Required.
	OutboundPartitions int
}

// Validate fills the defaults of zero fields (the queue's) and reports every
// invalid field, each by name.
func (c *Config) Validate() error {
	var errs []error
	if c.OutboundPartitions <= 0 {
		errs = append(errs, errors.New("sender: OutboundPartitions (the outbound topic's partition count) must be set"))
	}
	// The queue names its own fields ("queue: Origin must be set").
	errs = append(errs, c.Queue.Validate())
	return errors.Join(errs...)
}

// Sender is the stage.
type Sender struct {
	m           *queue.Manager
	store       *Store
	fence       *Fence
	log         *slog.Logger
	now         func() time.Time
	parts       int                   // the outbound topic's partitions
	partitionOf func(dest string) int // dest's outbound partition, as the router's writer places it

	mu    sync.Mutex
	owned map[int]int // partition → open handlers
}

// New returns the stage sending with transport and keeping state in pool.
func New(cfg Config, pool *pgxpool.Pool, transport queue.Transport, logger *slog.Logger, reg prometheus.Registerer) (*Sender, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Sender{log: logger, now: cfg.Queue.Now, owned: map[int]int{}}
	s.parts, s.partitionOf = cfg.OutboundPartitions, kafkaio.Partitioner(cfg.OutboundPartitions)
	cfg.Queue.Owns = s.owns
	s.fence = NewFence(pool.Config().ConnConfig, logger)
	cfg.Queue.Fence = s.fence
	s.store = NewStore(pool)
	m, err := queue.NewManager(cfg.Queue, transport, s.store, logger, reg)
	if err != nil {
		return nil, err
	}
	if err := reg.Register(newStoredBacklog(pool)); err != nil {
		return nil, err
	}
	s.m = m
	return s, nil
}

// owns reports whether dest's partition is assigned to this member.
func (s *Sender) owns(dest string) bool {
	p := s.partitionOf(dest)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.owned[p] > 0
}

// Controller is what the admin API's signals act on (ControlListener): the
// destination queues.
func (s *Sender) Controller() Controller { return s.m }

// Run runs the destination queues and watches their fences' connection
// until ctx ends.
func (s *Sender) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.m.Run(gctx) })
	g.Go(func() error { return s.fence.Run(gctx) })
	return g.Wait()
}

// Open implements runtime.Stage.
func (s *Sender) Open(_ context.Context, _ string, id int) (runtime.PartitionHandler, error) {
	if id < 0 || id >= s.parts {
		// The configured count decides which destinations catch-up wakes here:
		// a wrong one would wake other members' destinations.
		return nil, fmt.Errorf("sender: partition %d assigned, but the outbound topic is configured with %d partitions", id, s.parts)
	}
	s.mu.Lock()
	s.owned[id]++
	s.mu.Unlock()
	p := &partition{s: s, id: id, dests: map[string]bool{}}
	p.stored = runtime.Batch[schema.OutboundRecord]{Max: maxStoredBatch, Flush: s.store.flushStored(s.m)}
	return p, nil
}

// maxStoredBatch bounds the to-device and device-list records stored in one
// statement.
const maxStoredBatch = 500

type partition struct {
	s      *Sender
	id     int
	mu     sync.Mutex
	dests  map[string]bool
	closed bool
	// stored keeps to-device and device-list records to store together
	// (one statement per kind), flushed at the end of what was fetched,
	// when full, and before any other record is handled.
	stored runtime.Batch[schema.OutboundRecord]
}

// Handle implements runtime.PartitionHandler.
func (p *partition) Handle(ctx context.Context, m kafka.Message, done func()) error {
	rec, err := schema.DecodeOutboundRecord(m.Value)
	if err != nil {
		return runtime.Poison(err)
	}
	if string(m.Key) != rec.Destination {
		// The key placed the record in this partition, so it decides which
		// member owns the destination (and holds its fence): a record naming
		// another destination would be sent by a member that does not own it.
		return runtime.Poison(fmt.Errorf("outbound record for %q keyed %q: the key must be the destination", rec.Destination, m.Key))
	}
	targets := rec.Targets()
	for _, d := range targets[1:] {
		if got := p.s.partitionOf(d); got != p.id {
			// Sent from here, d would have two owners: this member and
			// the one its own partition is assigned to.
			return runtime.Poison(fmt.Errorf("pdu record in partition %d lists %q, whose partition is %d", p.id, d, got))
		}
	}
	p.mu.Lock()
	for _, d := range targets {
		p.dests[d] = true
	}
	p.mu.Unlock()
	if rec.Kind == schema.KindToDevice || rec.Kind == schema.KindDeviceList {
		return p.stored.Add(ctx, m, rec, done)
	}
	if err := p.stored.FlushKept(ctx); err != nil {
		return err
	}
	switch rec.Kind {
	case schema.KindPDU:
		return p.s.enqueuePDU(ctx, rec, targets, done)
	case schema.KindEDU:
		if rec.EDUType == edu.TypePresence {
			return p.s.presenceEDU(ctx, rec, done)
		}
		return p.s.m.EnqueueEDU(ctx, rec.Destination, queue.EDU{EDU: txn.EDU{Type: rec.EDUType, Content: rec.Content}, Key: rec.EDUKey}, done)
	case schema.KindPresence:
		return p.s.m.EnqueuePresence(ctx, rec.Destination, rec.Presence, done)
	case schema.KindReceipt:
		rs := make([]queue.Receipt, len(rec.Receipts))
		for i, r := range rec.Receipts {
			rs[i] = queue.Receipt{RoomID: r.RoomID, UserID: r.UserID, EventIDs: r.EventIDs, ThreadID: r.ThreadID, TS: r.TS}
		}
		return p.s.m.EnqueueReceipts(ctx, rec.Destination, rs, done)
	default: // DecodeOutboundRecord knows no other kind: a kind added there must be handled here
		return runtime.Poison(fmt.Errorf("outbound record of kind %q: the sender cannot send it", rec.Kind))
	}
}

// enqueuePDU hands a pdu record's PDU to each of its destinations; done runs
// once every one of them is done with it (sent, or kept for catch-up). Should
// an enqueue fail, the runtime hands the record again: the destinations that
// already have the PDU skip it then (at or below what they hold), and the
// first attempt's callbacks count towards nothing.
func (s *Sender) enqueuePDU(ctx context.Context, rec schema.OutboundRecord, targets []string, done func()) error {
	pdu := queue.PDU{RoomID: rec.RoomID, EventID: rec.EventID, Position: rec.Position, JSON: rec.PDU}
	if len(targets) == 1 {
		return s.m.EnqueuePDU(ctx, targets[0], pdu, done)
	}
	var left atomic.Int32
	left.Store(int32(len(targets)))
	each := func() {
		if left.Add(-1) == 0 {
			done()
		}
	}
	for _, d := range targets {
		if err := s.m.EnqueuePDU(ctx, d, pdu, each); err != nil {
			return err
		}
	}
	return nil
}

// flushStored keeps to-device and device-list records' EDUs in the store
// until their destinations accept them, tells the destinations, and lets the
// records be committed: from here on the store, not the topic, holds them,
// through backoff, restarts and rebalances. A batch the store refuses as
// invalid (SQLSTATE class 22 or 23) is poison: the runtime stores its
// records one by one and dead-letters the one at fault.
func (s *Store) flushStored(m *queue.Manager) func(context.Context, []schema.OutboundRecord, func()) error {
	return func(ctx context.Context, recs []schema.OutboundRecord, done func()) error {
		var toDevice, deviceLists []schema.OutboundRecord
		for _, r := range recs {
			if r.Kind == schema.KindToDevice {
				toDevice = append(toDevice, r)
			} else {
				deviceLists = append(deviceLists, r)
			}
		}
		if len(toDevice) > 0 {
			if err := s.StoreToDevice(ctx, toDevice); err != nil {
				return err
			}
		}
		if len(deviceLists) > 0 {
			if err := s.StoreDeviceLists(ctx, deviceLists); err != nil {
				return err
			}
		}
		type notice struct {
			dest string
			kind queue.Durable
		}
		seen := map[notice]bool{}
		for _, r := range recs {
			n := notice{r.Destination, queue.DeviceLists}
			if r.Kind == schema.KindToDevice {
				n.kind = queue.ToDevice
			}
			if seen[n] {
				continue
			}
			seen[n] = true
			if err := m.NotifyStored(ctx, n.dest, n.kind); err != nil {
				return err
			}
		}
		done()
		return nil
	}
}

// presenceEDU reads an m.presence EDU record (as routers wrote presence
// before presence records) into states, so that the destination merges them
// with its other presence and sends one m.presence EDU per transaction. One
// that cannot be read is dropped and counted.
func (s *Sender) presenceEDU(ctx context.Context, rec schema.OutboundRecord, done func()) error {
	states, err := presenceEDUStates(rec.Content, s.now())
	if err != nil {
		s.m.DropUnsendable(rec.Destination, "edu", fmt.Errorf("an m.presence EDU that can never be sent: %w", err))
		done()
		return nil
	}
	return s.m.EnqueuePresence(ctx, rec.Destination, states, done)
}

// presenceEDUStates reads the content of an m.presence EDU received at now
// into states (last_active_ts = now − last_active_ago), each checked by
// presence.State.Check. It fails, wrapping edu.ErrInvalid, on content an
// m.presence EDU may not have.
func presenceEDUStates(content json.RawMessage, now time.Time) ([]presence.State, error) {
	fail := func(err error) ([]presence.State, error) {
		return nil, fmt.Errorf("%w: %s: %w", edu.ErrInvalid, edu.TypePresence, err)
	}
	var p edu.Presence
	if err := json.Unmarshal(content, &p); err != nil {
		return fail(err)
	}
	if p.Push == nil {
		return fail(errors.New("no push"))
	}
	out := make([]presence.State, 0, len(p.Push))
	for _, u := range p.Push {
		s := presence.State{UserID: u.UserID, Presence: u.Presence, StatusMsg: u.StatusMsg, LastActiveTS: now.UnixMilli() - u.LastActiveAgo}
		if u.CurrentlyActive != nil {
			s.CurrentlyActive = *u.CurrentlyActive
		}
		if err := s.Check(); err != nil {
			return fail(err)
		}
		if u.LastActiveAgo < 0 {
			return fail(fmt.Errorf("%s: negative last_active_ago", u.UserID))
		}
		out = append(out, s)
	}
	return out, nil
}

// Close implements runtime.PartitionHandler: it stops the partition's
// destinations and waits for their in-flight transactions. Those are the
// destinations its records named and those catch-up woke without a record
// (after a restart or a takeover). Ownership is given up first, so catch-up
// cannot claim one of them once the list is taken.
func (p *partition) Close(ctx context.Context) error {
	p.stored.Close() // kept records are not done: the next owner gets them
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed { // idempotent: ownership is given up once
		p.closed = true
		p.s.mu.Lock()
		if p.s.owned[p.id]--; p.s.owned[p.id] <= 0 {
			delete(p.s.owned, p.id)
		}
		p.s.mu.Unlock()
	}
	dests := make([]string, 0, len(p.dests))
	for d := range p.dests {
		dests = append(dests, d)
	}
	for _, d := range p.s.m.Destinations() {
		if !p.dests[d] && p.s.partitionOf(d) == p.id {
			dests = append(dests, d)
		}
	}
	return p.s.m.Stop(ctx, dests)
}
