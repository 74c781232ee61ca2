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

	"github.com/fedpipe/fedpipe/federation/edu"
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
	dest string
	mu   sync.Mutex
	pdus []Item
	edus []Item
	// presence holds the latest unsent state per user, presenceUsers its
	// users in the order they were first queued (presence.go).
	presence      map[string]pendingPresence
	presenceUsers []string
	running       bool // a worker is sending (at most one: one transaction in flight)
	// catchingUp: missed rooms are being sent; live PDUs go to the store meanwhile.
	catchingUp bool
	stopping   bool
	stopped    chan struct{} // closed by Stop: interrupts a retry pause
	// recording counts Enqueue's catch-up writes under way, recorded those
	// finished: catch-up ends only when none happened since its last read.
	recording int
	recorded  uint64
	retry     RetryState
	loaded    bool
	idle      chan struct{}      // closed when the worker exits; nil when none runs
	cancel    context.CancelFunc // cancels the running worker (Stop past its deadline)
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
	mgr := &Manager{cfg: cfg, t: t, store: s, log: logger, m: m, queues: map[string]*destQueue{},
		// Transaction ids: this process's start time plus a counter, unique per
		// destination across restarts, as Synapse does; plus a random part,
		// because here a destination moves between members, and two members
		// started in the same millisecond must not reuse each other's ids
		// (a receiver would take a new transaction for a retried one and drop it).
		txnBase: fmt.Sprintf("%d-%08x", cfg.Now().UnixMilli(), rand.Uint32()),
	}
	if err := reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fedpipe_sender_destinations_backing_off",
		Help: "Destinations with a queue on this member that are backed off, paused or catching up."}, mgr.backingOff)); err != nil {
		return nil, err
	}
	return mgr, nil
}

// backingOff counts, at scrape time, the destinations not sending live.
func (m *Manager) backingOff() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.cfg.Now()
	n := 0
	for _, q := range m.queues {
		q.mu.Lock()
		if q.catchingUp || q.retry.Interval > 0 || q.retry.Failing(now) {
			n++
		}
		q.mu.Unlock()
	}
	return float64(n)
}

// Run supervises the destination workers and paces catch-up until ctx ends.
// It fails when a worker cannot record a backoff in the store even after
// retries: its records are then redelivered after a restart.
func (m *Manager) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	m.mu.Lock()
	m.group, m.ctx = g, gctx
	m.mu.Unlock()
	g.Go(func() error { return m.catchUpLoop(gctx) })
	// Workers are added to g (under m.mu) only while group is set, and this
	// goroutine, counted in g, clears it: so no Go call can race with Wait
	// once the count has dropped to zero.
	g.Go(func() error {
		<-gctx.Done()
		m.mu.Lock()
		m.group = nil
		m.mu.Unlock()
		return nil
	})
	err := g.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// spawn runs a destination worker under Run's errgroup. The caller has set
// q.running and q.idle.
func (m *Manager) spawn(q *destQueue, loop func(context.Context, *destQueue) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.group == nil {
		q.mu.Lock()
		q.finish()
		q.mu.Unlock()
		return ErrNotRunning
	}
	ctx, cancel := context.WithCancel(m.ctx)
	q.mu.Lock()
	q.cancel = cancel
	idle := q.idle
	q.mu.Unlock()
	m.m.active.Inc()
	m.group.Go(func() error {
		defer cancel()
		err := loop(ctx, q)
		m.m.active.Dec()
		q.mu.Lock()
		if q.idle == idle { // the loop has not handed over to a newer worker
			q.finish()
		}
		q.mu.Unlock()
		return err
	})
	return nil
}

// finish marks q's worker gone. q.mu is held. A loop calls it itself when it
// decides to exit on an empty queue, atomically with that decision, so an
// item enqueued just after starts a new worker.
func (q *destQueue) finish() {
	q.running = false
	q.cancel = nil
	if q.idle != nil {
		close(q.idle)
		q.idle = nil
	}
}

func (m *Manager) queue(dest string) *destQueue {
	m.mu.Lock()
	defer m.mu.Unlock()
	q, ok := m.queues[dest]
	if !ok {
		q = &destQueue{dest: dest, stopped: make(chan struct{})}
		m.queues[dest] = q
		m.m.destinations.Set(float64(len(m.queues)))
	}
	return q
}

// Enqueue hands an item to its destination's queue. A PDU for a destination
// that is backing off is recorded for catch-up at once (not held in memory); an
// EDU or presence for it is dropped and counted, as Synapse does. An error
// means the item was not taken (the store failed) and should be offered again.
func (m *Manager) Enqueue(ctx context.Context, dest string, it Item) error {
	it, ok := m.presenceOf(dest, it)
	if !ok {
		it.Done() // no state left worth sending
		return nil
	}
	q := m.queue(dest)
	if err := m.load(ctx, q); err != nil {
		return fmt.Errorf("loading backoff of %s: %w", dest, err)
	}
	q.mu.Lock()
	now := m.cfg.Now()
	if q.retry.Failing(now) || q.catchingUp || q.retry.Interval > 0 {
		// Backing off, or due but not caught up yet: the catch-up loop sends it.
		if !it.isPDU() {
			q.mu.Unlock()
			m.m.edusDropped.WithLabelValues(eduType(it)).Add(float64(eduCount(it)))
			it.Done()
			return nil
		}
		q.recording++
		q.mu.Unlock()
		err := m.store.RecordCatchUp(ctx, dest, []CatchUp{{RoomID: it.RoomID, Position: it.Position, EventID: it.EventID}})
		q.mu.Lock()
		q.recording--
		q.recorded++
		q.mu.Unlock()
		if err != nil {
			return fmt.Errorf("recording catch-up for %s: %w", dest, err)
		}
		m.m.pdusToCatchUp.Inc()
		it.Done()
		return nil
	}
	var pres *presenceItem
	var superseded []*presenceItem
	switch {
	case it.isPDU():
		q.pdus = append(q.pdus, it)
	case it.isPresence():
		pres = &presenceItem{done: it.Done}
		pres.left.Store(int64(len(it.Presence)))
		superseded = q.addPresence(it.Presence, pres)
	default:
		q.edus = append(q.edus, it)
	}
	start := !q.running && !q.stopping
	if start {
		q.running = true
		q.idle = make(chan struct{})
	}
	q.mu.Unlock()
	// Outside q.mu: Done is the caller's code.
	m.m.presenceSuperseded.Add(float64(len(superseded)))
	releaseAll(superseded)
	if start {
		if err := m.spawn(q, m.sendLoop); err != nil {
			q.mu.Lock() // not taken: the caller offers it again
			switch {
			case it.isPDU() && len(q.pdus) > 0:
				q.pdus = q.pdus[:len(q.pdus)-1]
			case it.isPresence():
				q.forgetPresence(pres)
			case len(q.edus) > 0:
				q.edus = q.edus[:len(q.edus)-1]
			}
			q.mu.Unlock()
			return err
		}
	}
	return nil
}

// presenceOf reads an m.presence EDU into presence states, so that it is
// merged with the destination's other presence (one m.presence EDU per
// transaction), and leaves out states no m.presence EDU may carry (dropped
// and counted, as is an m.presence EDU that cannot be read). ok is false when
// nothing is left to send.
func (m *Manager) presenceOf(dest string, it Item) (_ Item, ok bool) {
	if it.isPDU() {
		return it, true
	}
	if len(it.Presence) == 0 && it.EDU.Type == edu.TypePresence {
		states, err := edu.ParsePresence(it.EDU.Content, m.cfg.Now())
		if err != nil {
			m.m.dropped.WithLabelValues("edu", "unsendable").Inc()
			m.log.Error("dropping an m.presence EDU that can never be sent", "destination", dest, "err", err)
			return it, false
		}
		it.Presence, it.EDU = states, txn.EDU{}
		return it, len(states) > 0
	}
	if len(it.Presence) == 0 {
		return it, true
	}
	valid := it.Presence[:0:0]
	for _, s := range it.Presence {
		if err := s.Check(); err != nil {
			m.m.dropped.WithLabelValues("edu", "unsendable").Inc()
			m.log.Error("dropping a presence state that can never be sent", "destination", dest, "err", err)
			continue
		}
		valid = append(valid, s)
	}
	it.Presence = valid
	return it, len(valid) > 0
}

// Stop stops the queues of dests (their partition was revoked): it waits for
// each in-flight transaction to finish, and forgets what was not sent (those
// records are not committed, so the next owner gets them). After Stop returns
// nothing of this member runs for dests.
func (m *Manager) Stop(ctx context.Context, dests []string) error {
	var waits []chan struct{}
	var stopping []*destQueue
	m.mu.Lock()
	for _, d := range dests {
		q, ok := m.queues[d]
		if !ok {
			continue
		}
		delete(m.queues, d)
		q.mu.Lock()
		if !q.stopping {
			q.stopping = true
			close(q.stopped)
		}
		q.pdus, q.edus = nil, nil
		q.presence, q.presenceUsers = nil, nil
		if q.idle != nil {
			stopping = append(stopping, q)
			waits = append(waits, q.idle)
		}
		q.mu.Unlock()
	}
	m.m.destinations.Set(float64(len(m.queues)))
	m.mu.Unlock()
	for i, w := range waits {
		select {
		case <-w:
			continue
		case <-ctx.Done():
		}
		// Out of time: cancel the sends still in flight and wait for them to
		// return (transports honour cancellation), so that nothing of this
		// member is sending to these destinations once Stop returns.
		for _, q := range stopping[i:] {
			q.mu.Lock()
			if q.cancel != nil {
				q.cancel()
			}
			q.mu.Unlock()
		}
		for _, w := range waits[i:] {
			<-w
		}
		return fmt.Errorf("waiting for in-flight transactions: %w (they were cancelled)", ctx.Err())
	}
	return nil
}

// Destinations lists the destinations with a queue on this member, so a
// partition's owner can stop every one of its destinations, including those
// only woken for catch-up.
func (m *Manager) Destinations() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.queues))
	for d := range m.queues {
		out = append(out, d)
	}
	return out
}
