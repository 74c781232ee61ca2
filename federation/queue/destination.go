package queue

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/presence"
)

// destination is one remote server as this member serves it: what it has to
// send, its backoff, and its worker, which runs only while there is something
// to send or to catch up (an idle destination costs one small struct).
type destination struct {
	name string
	*env

	mu      sync.Mutex
	pending pending
	retry   RetryState
	// loadedAt is when retry was last read from the store (zero: never);
	// gen counts the worker's changes to retry, so that a read begun before
	// one is not applied over it.
	loadedAt time.Time
	gen      uint64
	// behind: PDUs it missed may be in the store (it failed, was paused, or
	// had PDUs recorded), so it catches up before it sends live again.
	behind bool
	// catchingUp: a worker is sending missed rooms; PDUs go to the store and
	// EDUs are dropped meanwhile.
	catchingUp bool
	// recording counts enqueuePDU's catch-up writes under way, recorded those
	// finished: catch-up ends only when none happened since its last read.
	recording int
	recorded  uint64
	// seen is, per room, the greatest position of d's PDUs the destination
	// accepted (read from the store when d first gets a PDU, nil before) or
	// that d took since (queued, or recorded for catch-up): a PDU at or below
	// it is a replay and is not sent again.
	seen map[string]int64
	// acks are the positions of stored EDUs delivered, by Durable kind, to
	// delete from the store (flushAcks).
	acks     [2][]int64
	w        worker
	stopping bool
	stopped  chan struct{} // closed by stop: interrupts a pause between retries
}

// worker is a destination's worker slot: at most one runs, so at most one
// transaction is in flight.
type worker struct {
	running bool
	idle    chan struct{}      // closed when the worker exits
	cancel  context.CancelFunc // cancels it (Stop past its deadline)
	// send is the context its sends run in (set once it holds the fence):
	// it also ends when the fence is lost.
	send context.Context
}

func newDestination(name string, e *env) *destination {
	return &destination{name: name, env: e, stopped: make(chan struct{}), pending: newPending()}
}

// enqueuePDU queues p, or records it for catch-up when d is not sending live.
// A PDU the destination already has or will get (it accepted, or d took, an
// event of p's room at or past p's position: p is a replayed record) is done
// at once. Within a room the records reach d in position order (the relay
// publishes in stream order, the router routes a room in order), so only a
// replay comes at or below that position; and what d took is either sent or
// recorded for catch-up, never dropped but for a PDU that can never be sent.
func (d *destination) enqueuePDU(ctx context.Context, p PDU, done func()) error {
	if err := d.refresh(ctx); err != nil {
		return err
	}
	if err := d.loadAcked(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	if a, ok := d.seen[p.RoomID]; ok && p.Position <= a {
		d.mu.Unlock()
		d.m.replayed.Inc()
		done()
		return nil
	}
	d.seen[p.RoomID] = p.Position
	if d.retry.Failing(d.cfg.Now()) || d.catchingUp || d.behind {
		// The catch-up sends the room's latest event.
		d.behind = true
		d.recording++
		d.mu.Unlock()
		return d.recordMissed(ctx, p, done)
	}
	now := d.cfg.Now()
	d.pending.pdus = append(d.pending.pdus, queuedPDU{PDU: p, done: done, at: now})
	if d.pending.over(d.cfg.MaxPending, d.cfg.MaxPendingAge, now) {
		return d.overflow(ctx) // unlocks d.mu
	}
	idle := d.wake(false)
	d.mu.Unlock()
	return d.launch(idle)
}

func (d *destination) recordMissed(ctx context.Context, p PDU, done func()) error {
	err := d.store.RecordCatchUp(ctx, d.name, []CatchUp{{RoomID: p.RoomID, Position: p.Position, EventID: p.EventID}})
	d.mu.Lock()
	d.recording--
	d.recorded++
	d.mu.Unlock()
	if err != nil {
		return fmt.Errorf("recording catch-up for %s: %w", d.name, err)
	}
	d.m.pdusToCatchUp.Inc()
	done()
	return nil
}

// enqueueEDU queues e, or drops it when d is failing or catching up. A
// destination that is due again but behind starts catching up, then sends it.
func (d *destination) enqueueEDU(ctx context.Context, e EDU, done func()) error {
	if err := d.refresh(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	if d.retry.Failing(d.cfg.Now()) || d.catchingUp {
		d.mu.Unlock()
		d.m.edusDropped.WithLabelValues(eduType(e.Type)).Inc()
		done()
		return nil
	}
	d.pending.edus.add(e, done)
	if d.pending.over(d.cfg.MaxPending, d.cfg.MaxPendingAge, d.cfg.Now()) {
		return d.overflow(ctx) // unlocks d.mu
	}
	idle := d.wake(false)
	d.mu.Unlock()
	return d.launch(idle)
}

// enqueuePresence merges states into d's presence as enqueueEDU queues an EDU.
func (d *destination) enqueuePresence(ctx context.Context, states []presence.State, done func()) error {
	if states = d.sendable(states); len(states) == 0 {
		done() // no state left worth sending
		return nil
	}
	item := newMergedItem(len(states), done)
	return d.enqueueMerged(ctx, edu.TypePresence, len(states), done, func() []*mergedItem {
		superseded := d.pending.presence.add(states, item)
		d.m.presenceSuperseded.Add(float64(len(superseded)))
		return superseded
	})
}

// enqueueMerged merges n items of an ephemeral kind of EDU (presence
// states, receipts) into their slot with add, which returns the items it
// superseded, or drops them (counted) when d is failing or catching up. A
// destination that is due again but behind starts catching up, then sends
// them.
func (d *destination) enqueueMerged(ctx context.Context, eduType string, n int, done func(), add func() []*mergedItem) error {
	if err := d.refresh(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	if d.retry.Failing(d.cfg.Now()) || d.catchingUp {
		d.mu.Unlock()
		d.m.edusDropped.WithLabelValues(eduType).Add(float64(n))
		done()
		return nil
	}
	superseded := add()
	idle := d.wake(false)
	d.mu.Unlock()
	releaseAll(superseded) // outside d.mu: done is the caller's code
	return d.launch(idle)
}

// sendable leaves out, dropped and counted, states no m.presence EDU may carry.
func (d *destination) sendable(states []presence.State) []presence.State {
	valid := states[:0:0]
	for _, s := range states {
		if err := s.Check(); err != nil {
			d.m.dropped.WithLabelValues("edu", "unsendable").Inc()
			d.log.Error("dropping a presence state that can never be sent", "destination", d.name, "err", err)
			continue
		}
		valid = append(valid, s)
	}
	return valid
}

// refresh reads d's backoff from the store when d is first used, and again
// when d is held as failing and was read at least CatchUpInterval ago: an
// operator may have resumed or reset it, and nothing else would wake a
// destination that only gets EDUs.
func (d *destination) refresh(ctx context.Context) error {
	d.mu.Lock()
	now := d.cfg.Now()
	stale := d.loadedAt.IsZero() || (d.retry.Failing(now) && now.Sub(d.loadedAt) >= d.cfg.CatchUpInterval)
	d.mu.Unlock()
	if !stale {
		return nil
	}
	if err := d.load(ctx); err != nil {
		return fmt.Errorf("loading backoff of %s: %w", d.name, err)
	}
	return nil
}

// loadAcked reads, once, what the destination accepted of each room. The
// read runs outside d.mu; what d recorded meanwhile is kept.
func (d *destination) loadAcked(ctx context.Context) error {
	d.mu.Lock()
	loaded := d.seen != nil
	d.mu.Unlock()
	if loaded {
		return nil
	}
	acked, err := d.store.AckedRooms(ctx, d.name)
	if err != nil {
		return fmt.Errorf("loading what %s accepted: %w", d.name, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.seen == nil {
		d.seen = make(map[string]int64, len(acked))
	}
	for room, pos := range acked {
		d.seen[room] = max(d.seen[room], pos)
	}
	return nil
}

// load reads d's backoff from the store, so a destination taken over from
// another member (or after a restart) keeps its schedule and an operator's
// pause, resume or reset is seen. A change the worker made meanwhile wins.
func (d *destination) load(ctx context.Context) error {
	d.mu.Lock()
	gen := d.gen
	d.mu.Unlock()
	r, err := d.store.LoadRetry(ctx, d.name)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gen == gen {
		d.retry, d.loadedAt = r, d.cfg.Now()
		d.behind = d.behind || r.Interval > 0 || r.Paused
	}
	return nil
}

// setRetry changes d's backoff in memory. d.mu is held.
func (d *destination) setRetry(r RetryState) {
	d.retry = r
	d.gen++
}

// wake takes the worker slot for a new worker when none runs, and returns the
// new worker's idle channel for launch (nil when a worker runs or d is
// stopping). The worker catches up first when catchUp is set or d is
// behind. d.mu is held.
func (d *destination) wake(catchUp bool) chan struct{} {
	if d.w.running || d.stopping {
		return nil
	}
	d.w = worker{running: true, idle: make(chan struct{})}
	d.catchingUp = catchUp || d.behind
	return d.w.idle
}

// launch starts the worker wake took the slot for (none when idle is nil).
// When Run is not running it gives the slot back and fails: what was queued
// stays undone, and is redelivered after a restart.
func (d *destination) launch(idle chan struct{}) error {
	if idle == nil {
		return nil
	}
	keep := func(cancel context.CancelFunc) {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.w.idle == idle {
			d.w.cancel = cancel
		}
	}
	// The gauge goes down before the slot is given back (defers run last
	// first): whoever waits for the slot, as Stop does, sees the worker gone
	// from the gauge too.
	d.m.active.Inc()
	err := d.sup.start(keep, func(ctx context.Context) error {
		defer d.exited(idle)
		defer d.m.active.Dec()
		return d.run(ctx, idle)
	})
	if err != nil {
		d.m.active.Dec()
		d.exited(idle)
	}
	return err
}

// exited gives the worker slot back, unless the worker already did (and a
// newer one may hold it).
func (d *destination) exited(idle chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.w.idle == idle {
		d.finish()
	}
}

// finish marks d's worker gone. d.mu is held. The send loop calls it itself
// when it decides to exit on an empty queue, atomically with that decision,
// so an item queued just after starts a new worker.
func (d *destination) finish() {
	if d.w.idle != nil {
		close(d.w.idle)
	}
	d.w = worker{}
	d.catchingUp = false
}

// closed is a closed channel: the idle channel of a destination with no worker.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// stop stops d: what is pending is forgotten (not done: the next owner gets
// it), a pause between retries ends, and the returned channel is closed once
// no worker of d runs.
func (d *destination) stop() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.stopping {
		d.stopping = true
		close(d.stopped)
	}
	d.pending = pending{}
	if d.w.idle == nil {
		return closed
	}
	return d.w.idle
}

// cancelWorker cancels the context of d's worker, if one runs.
func (d *destination) cancelWorker() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.w.cancel != nil {
		d.w.cancel()
	}
}

// halted reports whether d's worker should leave now.
func (d *destination) halted(ctx context.Context) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stopping || ctx.Err() != nil
}

// backingOff reports whether d is not sending live at now.
func (d *destination) backingOff(now time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.catchingUp || d.retry.Interval > 0 || d.retry.Failing(now)
}
