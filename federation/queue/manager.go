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

	"github.com/fedpipe/fedpipe/federation/presence"
)

// ErrNotRunning is returned by the Enqueue calls before Run has started or
// after it ended.
var ErrNotRunning = errors.New("queue manager is not running")

// Manager is the registry of the destinations this sender member serves, the
// supervisor of their workers and the pacer of their catch-up wake-ups.
// Everything about one destination is done by the destination itself.
type Manager struct {
	env *env
	sup supervisor

	mu    sync.Mutex
	dests map[string]*destination
}

// env is what every destination of a Manager shares.
type env struct {
	cfg   Config
	sched schedule
	t     Transport
	store Store
	log   *slog.Logger
	m     *metrics
	sup   *supervisor

	txnBase string
	txnSeq  atomic.Int64
}

// NewManager returns a Manager; Run must be running for the Enqueue calls to work.
func NewManager(cfg Config, t Transport, s Store, logger *slog.Logger, reg prometheus.Registerer) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	met, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	m := &Manager{dests: map[string]*destination{}, sup: supervisor{}}
	m.env = &env{cfg: cfg, sched: cfg.schedule(), t: t, store: s, log: logger, m: met, sup: &m.sup,
		// Transaction ids: this process's start time plus a counter, unique per
		// destination across restarts, as Synapse does; plus a random part,
		// because here a destination moves between members, and two members
		// started in the same millisecond must not reuse each other's ids
		// (a receiver would take a new transaction for a retried one and drop it).
		txnBase: fmt.Sprintf("%d-%08x", cfg.Now().UnixMilli(), rand.Uint32()),
	}
	if err := reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fedpipe_sender_destinations_backing_off",
		Help: "Destinations with a queue on this member that are backed off, paused or catching up."}, m.backingOff)); err != nil {
		return nil, err
	}
	return m, nil
}

// Run supervises the destination workers and paces catch-up until ctx ends.
// It fails when a worker cannot record a backoff in the store even after
// retries: its records are then redelivered after a restart.
func (m *Manager) Run(ctx context.Context) error {
	return m.sup.run(ctx, m.paceCatchUp)
}

// destination returns dest's destination, made on first use.
func (m *Manager) destination(dest string) *destination {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.dests[dest]
	if !ok {
		d = newDestination(dest, m.env)
		m.dests[dest] = d
		m.env.m.destinations.Set(float64(len(m.dests)))
	}
	return d
}

// EnqueuePDU hands a PDU to dest. done is called once the PDU was delivered,
// recorded for catch-up (dest is backing off, paused or catching up: PDUs are
// then not held in memory) or dropped by a documented rule. An error means
// the PDU was not taken (the store failed, or Run is not running) and should
// be offered again.
func (m *Manager) EnqueuePDU(ctx context.Context, dest string, p PDU, done func()) error {
	if !m.sup.running() {
		return ErrNotRunning
	}
	return m.destination(dest).enqueuePDU(ctx, p, done)
}

// EnqueueEDU hands an EDU to dest. An EDU for a destination that is backing
// off, paused or catching up is dropped and counted, as Synapse does. done
// is called once it was delivered or dropped; a keyed EDU replaced by a later
// one of the same key is done when that one is.
func (m *Manager) EnqueueEDU(ctx context.Context, dest string, e EDU, done func()) error {
	if !m.sup.running() {
		return ErrNotRunning
	}
	return m.destination(dest).enqueueEDU(ctx, e, done)
}

// EnqueuePresence hands local users' presence states (one per user) to dest.
// The destination keeps only the latest state per user and sends them in one
// m.presence EDU per transaction (≤50 users), aged to the time the transaction
// is built. done is called once every state was delivered, dropped (invalid
// states, or dest backing off, paused or catching up), or replaced unsent by
// a later state of the same user.
func (m *Manager) EnqueuePresence(ctx context.Context, dest string, states []presence.State, done func()) error {
	if !m.sup.running() {
		return ErrNotRunning
	}
	return m.destination(dest).enqueuePresence(ctx, states, done)
}

// EnqueueReceipts hands local users' read receipts to dest. The destination
// keeps the latest per (room, user, thread) and sends them in at most five
// m.receipt EDUs per transaction. done is called once every receipt was
// delivered, dropped (dest backing off, paused or catching up), or replaced
// unsent by a later one.
func (m *Manager) EnqueueReceipts(ctx context.Context, dest string, rs []Receipt, done func()) error {
	if !m.sup.running() {
		return ErrNotRunning
	}
	return m.destination(dest).enqueueReceipts(ctx, rs, done)
}

// NotifyStored tells dest that EDUs of kind were stored for it
// (Store.StoredEDUs returns them): it sends them in position order, keeps
// them through backoff (they stay in the store until accepted), and wakes
// when it is due again.
func (m *Manager) NotifyStored(ctx context.Context, dest string, kind Durable) error {
	if !m.sup.running() {
		return ErrNotRunning
	}
	return m.destination(dest).notifyStored(ctx, kind)
}

// DropUnsendable counts and logs a PDU or EDU (kind "pdu" or "edu") for dest
// that its caller found can never be sent, beside the queue's own such drops.
func (m *Manager) DropUnsendable(dest, kind string, err error) {
	m.env.m.dropped.WithLabelValues(kind, "unsendable").Inc()
	m.env.log.Error("dropping a "+kind+" that can never be sent", "destination", dest, "err", err)
}

// Stop stops dests (their partition was revoked): it waits for each in-flight
// transaction to finish, and forgets what was not sent (those records are not
// committed, so the next owner gets them). After Stop returns nothing of this
// member runs for dests. Past ctx's deadline the sends still in flight are
// cancelled, waited for, and Stop says so.
func (m *Manager) Stop(ctx context.Context, dests []string) error {
	var stopping []*destination
	m.mu.Lock()
	for _, name := range dests {
		if d, ok := m.dests[name]; ok {
			delete(m.dests, name)
			stopping = append(stopping, d)
		}
	}
	m.env.m.destinations.Set(float64(len(m.dests)))
	m.mu.Unlock()
	waits := make([]<-chan struct{}, len(stopping))
	for i, d := range stopping {
		waits[i] = d.stop()
	}
	for i, w := range waits {
		select {
		case <-w:
			continue
		case <-ctx.Done():
		}
		// Out of time: cancel the sends still in flight and wait for them to
		// return (transports honour cancellation), so that nothing of this
		// member is sending to these destinations once Stop returns.
		for _, d := range stopping[i:] {
			d.cancelWorker()
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
	out := make([]string, 0, len(m.dests))
	for d := range m.dests {
		out = append(out, d)
	}
	return out
}

// backingOff counts, at scrape time, the destinations not sending live.
func (m *Manager) backingOff() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.env.cfg.Now()
	n := 0
	for _, d := range m.dests {
		if d.backingOff(now) {
			n++
		}
	}
	return float64(n)
}
