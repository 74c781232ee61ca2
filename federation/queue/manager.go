package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/federation/txn"
)

// ErrNotRunning is returned by Enqueue before Run has started or after it ended.
var ErrNotRunning = errors.New("queue manager is not running")

// Manager owns the queues of the destinations this sender member serves.
type Manager struct {
	cfg   Config
	t     Transport
	store Store
	log   *slog.Logger
	m     *metrics

	txnBase string
	txnSeq  atomic.Int64

	mu     sync.Mutex
	queues map[string]*destQueue
	group  *errgroup.Group
	ctx    context.Context
}

// destQueue is one destination's queue. A worker goroutine exists only while
// there is something to send, so an idle destination costs one small struct.
type destQueue struct {
	dest    string
	mu      sync.Mutex
	pdus    []Item
	edus    []Item
	running bool // a worker is sending (at most one: one transaction in flight)
	// catchingUp: missed rooms are being sent; live PDUs go to the store meanwhile.
	catchingUp bool
	stopping   bool
	retry      RetryState
	loaded     bool
	idle       chan struct{} // closed when the worker exits; nil when none runs
}

// NewManager returns a Manager; Run must be running for Enqueue to work.
func NewManager(cfg Config, t Transport, s Store, logger *slog.Logger, reg prometheus.Registerer) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &Manager{cfg: cfg, t: t, store: s, log: logger, m: m, queues: map[string]*destQueue{},
		// Transaction ids: this process's start time plus a counter, unique per
		// destination across restarts, as Synapse does.
		txnBase: fmt.Sprint(cfg.Now().UnixMilli()),
	}, nil
}

// Run supervises the destination workers and paces catch-up until ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	m.mu.Lock()
	m.group, m.ctx = g, gctx
	m.mu.Unlock()
	g.Go(func() error { return m.catchUpLoop(gctx) })
	err := g.Wait()
	m.mu.Lock()
	m.group = nil
	m.mu.Unlock()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (m *Manager) queue(dest string) *destQueue {
	m.mu.Lock()
	defer m.mu.Unlock()
	q, ok := m.queues[dest]
	if !ok {
		q = &destQueue{dest: dest}
		m.queues[dest] = q
		m.m.destinations.Set(float64(len(m.queues)))
	}
	return q
}

// Enqueue hands an item to its destination's queue. A PDU for a destination
// that is backing off is recorded for catch-up at once (not held in memory); an
// EDU for it is dropped and counted, as Synapse does. An error means the item
// was not taken (the store failed) and should be offered again.
func (m *Manager) Enqueue(ctx context.Context, dest string, it Item) error {
	q := m.queue(dest)
	q.mu.Lock()
	if !q.loaded {
		q.mu.Unlock()
		r, err := m.store.LoadRetry(ctx, dest)
		if err != nil {
			return fmt.Errorf("loading backoff of %s: %w", dest, err)
		}
		q.mu.Lock()
		if !q.loaded {
			q.retry, q.loaded = r, true
		}
	}
	now := m.cfg.Now()
	if q.retry.Failing(now) || q.catchingUp || q.retry.Interval > 0 {
		// Backing off, or due but not caught up yet: the catch-up loop sends it.
		q.mu.Unlock()
		if !it.isPDU() {
			m.m.edusDropped.Inc()
			it.Done()
			return nil
		}
		if err := m.store.RecordCatchUp(ctx, dest, []CatchUp{{RoomID: it.RoomID, Position: it.Position, EventID: it.EventID}}); err != nil {
			return fmt.Errorf("recording catch-up for %s: %w", dest, err)
		}
		m.m.pdusToCatchUp.Inc()
		it.Done()
		return nil
	}
	if it.isPDU() {
		q.pdus = append(q.pdus, it)
	} else {
		q.edus = append(q.edus, it)
	}
	start := !q.running && !q.stopping
	if start {
		q.running = true
		q.idle = make(chan struct{})
	}
	q.mu.Unlock()
	if start {
		return m.spawn(q, m.sendLoop)
	}
	return nil
}

// spawn runs a destination worker under Run's errgroup.
func (m *Manager) spawn(q *destQueue, loop func(context.Context, *destQueue)) error {
	m.mu.Lock()
	g, ctx := m.group, m.ctx
	m.mu.Unlock()
	if g == nil {
		q.mu.Lock()
		q.running = false
		close(q.idle)
		q.idle = nil
		q.mu.Unlock()
		return ErrNotRunning
	}
	m.m.active.Inc()
	g.Go(func() error {
		defer m.m.active.Dec()
		loop(ctx, q)
		return nil
	})
	return nil
}

// finish marks q's worker gone.
func (q *destQueue) finish() {
	q.running = false
	if q.idle != nil {
		close(q.idle)
		q.idle = nil
	}
}

// sendLoop sends q's live items, one transaction at a time, until q is empty,
// stopping, or the destination fails.
func (m *Manager) sendLoop(ctx context.Context, q *destQueue) {
	for {
		q.mu.Lock()
		if q.stopping || ctx.Err() != nil || (len(q.pdus) == 0 && len(q.edus) == 0) {
			q.finish()
			q.mu.Unlock()
			return
		}
		np, ne := min(len(q.pdus), txn.MaxPDUs), min(len(q.edus), txn.MaxEDUs)
		items := append(append([]Item(nil), q.pdus[:np]...), q.edus[:ne]...)
		q.pdus, q.edus = q.pdus[np:], q.edus[ne:]
		q.mu.Unlock()

		t := m.newTxn(q.dest)
		for i := range items {
			var err error
			if items[i].isPDU() {
				err = t.AddPDU(items[i].PDU)
			} else {
				err = t.AddEDU(items[i].EDU)
			}
			if err != nil { // cannot happen within the limits taken above
				m.log.Error("building transaction", "destination", q.dest, "err", err)
			}
		}
		if m.send(ctx, q, t, items) != nil {
			return
		}
	}
}

// send sends t; on success the items are done. On failure the destination backs
// off: its PDUs (these and all queued) are recorded for catch-up and its EDUs
// dropped; the worker then exits (the error is returned).
func (m *Manager) send(ctx context.Context, q *destQueue, t *txn.Transaction, items []Item) error {
	start := m.cfg.Now()
	resp, err := m.t.SendTransaction(ctx, t)
	m.m.sendSeconds.Observe(m.cfg.Now().Sub(start).Seconds())
	if err == nil {
		m.m.txns.WithLabelValues("ok").Inc()
		m.m.pdusSent.Add(float64(len(t.PDUs)))
		m.m.edusSent.Add(float64(len(t.EDUs)))
		for id, reason := range resp.Errors() {
			m.m.pduRejected.Inc()
			m.log.Warn("destination rejected a PDU", "destination", q.dest, "event_id", id, "error", reason)
		}
		for _, it := range items {
			it.Done()
		}
		return nil
	}
	if ctx.Err() != nil {
		q.mu.Lock()
		q.finish()
		q.mu.Unlock()
		return err // stopping: items stay undone and are redelivered to the next owner
	}
	switch m.cfg.Classify(err) {
	case Fatal:
		m.m.txns.WithLabelValues("fatal").Inc()
		m.log.Error("destination refused our transaction as malformed; dropping it", "destination", q.dest, "txn", t.ID, "pdus", len(t.PDUs), "err", err)
		for _, it := range items {
			it.Done()
		}
		return nil
	default:
		m.m.txns.WithLabelValues("failed").Inc()
		if berr := m.backOff(ctx, q, items, err); berr != nil {
			m.log.Error("recording backoff failed; items will be redelivered", "destination", q.dest, "err", berr)
		}
		return err
	}
}

// backOff records the failure and moves everything pending for q to catch-up.
func (m *Manager) backOff(ctx context.Context, q *destQueue, inFlight []Item, cause error) error {
	q.mu.Lock()
	items := append(append(append([]Item(nil), inFlight...), q.pdus...), q.edus...)
	q.pdus, q.edus = nil, nil
	interval := m.cfg.nextInterval(q.retry.Interval)
	q.retry = RetryState{Interval: interval, NextAttempt: m.cfg.Now().Add(m.cfg.jitter(interval, m.cfg.Rand()))}
	r := q.retry
	q.finish()
	q.mu.Unlock()
	m.log.Warn("destination failing; backing off", "destination", q.dest, "interval", interval, "until", r.NextAttempt, "err", cause)
	m.m.backoffs.Inc()
	latest := map[string]CatchUp{}
	var edus []Item
	for _, it := range items {
		if !it.isPDU() {
			edus = append(edus, it)
			continue
		}
		if c, ok := latest[it.RoomID]; !ok || it.Position > c.Position {
			latest[it.RoomID] = CatchUp{RoomID: it.RoomID, Position: it.Position, EventID: it.EventID}
		}
	}
	rooms := make([]CatchUp, 0, len(latest))
	for _, c := range latest {
		rooms = append(rooms, c)
	}
	if err := m.store.SaveRetry(ctx, q.dest, r); err != nil {
		return err // nothing done: the items are redelivered and tried again
	}
	if err := m.store.RecordCatchUp(ctx, q.dest, rooms); err != nil {
		return err
	}
	for _, it := range items {
		if it.isPDU() {
			m.m.pdusToCatchUp.Inc()
		}
		it.Done()
	}
	m.m.edusDropped.Add(float64(len(edus)))
	return nil
}

func (m *Manager) newTxn(dest string) *txn.Transaction {
	return &txn.Transaction{ID: fmt.Sprintf("%s.%d", m.txnBase, m.txnSeq.Add(1)), Origin: m.cfg.Origin, Destination: dest, OriginServerTS: m.cfg.Now().UnixMilli()}
}

// Stop stops the queues of dests (their partition was revoked): it waits for
// each in-flight transaction to finish, and forgets what was not sent (those
// records are not committed, so the next owner gets them). After Stop returns
// nothing of this member runs for dests.
func (m *Manager) Stop(ctx context.Context, dests []string) error {
	var waits []chan struct{}
	m.mu.Lock()
	for _, d := range dests {
		q, ok := m.queues[d]
		if !ok {
			continue
		}
		delete(m.queues, d)
		q.mu.Lock()
		q.stopping = true
		q.pdus, q.edus = nil, nil
		if q.idle != nil {
			waits = append(waits, q.idle)
		}
		q.mu.Unlock()
	}
	m.m.destinations.Set(float64(len(m.queues)))
	m.mu.Unlock()
	for _, w := range waits {
		select {
		case <-w:
		case <-ctx.Done():
			return fmt.Errorf("waiting for in-flight transactions: %w", ctx.Err())
		}
	}
	return nil
}
