package queue

import (
	"context"
	"errors"
	"fmt"
)

// backOff records that d failed: its backoff grows (persisted), and what it
// held (inFlight and everything pending) is shed: its PDUs recorded for
// catch-up, its EDUs and presence dropped. New PDUs go to the store from now
// on, until a catch-up has run.
func (d *destination) backOff(ctx context.Context, inFlight batch, cause error) error {
	d.mu.Lock()
	held := inFlight.then(d.pending.drain())
	d.setRetry(d.retry.fail(d.sched, d.cfg.Now(), d.cfg.Rand()))
	d.behind = true
	r := d.retry
	d.mu.Unlock()
	d.log.Warn("destination failing; backing off", "destination", d.name, "interval", r.Interval, "until", r.NextAttempt, "err", cause)
	d.m.backoffs.Inc()
	err := d.persist(ctx, "recording backoff", func(ctx context.Context) error { return d.store.SaveRetry(ctx, d.name, r) })
	if err == nil {
		err = d.shed(ctx, held)
	}
	if errors.Is(err, errStopped) {
		return nil
	}
	return err
}

// overflow switches d to catch-up mode because its queue passed its bound:
// what is pending is shed (PDUs recorded for catch-up, EDUs dropped) and d is
// behind, so new PDUs go to the store and the next worker catches up. d.mu is
// held and is unlocked. When the record fails, what was pending is queued
// again (first) and the error returned.
func (d *destination) overflow(ctx context.Context) error {
	held := d.pending.drain()
	d.behind = true
	d.recording++
	d.mu.Unlock()
	d.m.overflows.Inc()
	d.log.Warn("destination's queue passed its bound; it catches up instead", "destination", d.name, "pdus", len(held.pdus), "edus", len(held.edus))
	err := d.shedOnce(ctx, held)
	d.mu.Lock()
	d.recording--
	d.recorded++
	var idle chan struct{}
	if err != nil {
		d.pending.retry = held.then(d.pending.retry)
		idle = d.wake(false)
	}
	d.mu.Unlock()
	if err != nil {
		if lerr := d.launch(idle); lerr != nil {
			return lerr
		}
		return fmt.Errorf("recording the overflowing queue of %s for catch-up: %w", d.name, err)
	}
	return nil
}

// shedOnce is shed with one try at the store.
func (d *destination) shedOnce(ctx context.Context, b batch) error {
	b = b.withoutDurable()
	if rooms := latestPerRoom(b); len(rooms) > 0 {
		if err := d.store.RecordCatchUp(ctx, d.name, rooms); err != nil {
			d.m.storeErrors.Inc()
			return err
		}
	}
	d.m.pdusToCatchUp.Add(float64(len(b.pdus)))
	for _, it := range b.edus {
		d.m.edusDropped.WithLabelValues(eduType(it.typ)).Add(float64(it.count))
	}
	b.done()
	return nil
}

// latestPerRoom is the latest position per room of b's PDUs.
func latestPerRoom(b batch) []CatchUp {
	latest := map[string]CatchUp{}
	for _, it := range b.pdus {
		if c, ok := latest[it.RoomID]; !ok || it.Position > c.Position {
			latest[it.RoomID] = CatchUp{RoomID: it.RoomID, Position: it.Position, EventID: it.EventID}
		}
	}
	rooms := make([]CatchUp, 0, len(latest))
	for _, c := range latest {
		rooms = append(rooms, c)
	}
	return rooms
}

// shed completes b without sending it: the latest position per room of its
// PDUs is recorded for catch-up, its EDUs are dropped and counted.
func (d *destination) shed(ctx context.Context, b batch) error {
	b = b.withoutDurable()
	if rooms := latestPerRoom(b); len(rooms) > 0 {
		if err := d.persist(ctx, "recording catch-up", func(ctx context.Context) error { return d.store.RecordCatchUp(ctx, d.name, rooms) }); err != nil {
			return err
		}
	}
	d.m.pdusToCatchUp.Add(float64(len(b.pdus)))
	for _, it := range b.edus {
		d.m.edusDropped.WithLabelValues(eduType(it.typ)).Add(float64(it.count))
	}
	b.done()
	return nil
}

// persist runs a store write d cannot go on without, retrying with doubling
// pauses. Giving up returns an error for Run: the items involved are not
// done, and a restart redelivers them. Stopping or shutting down gives up
// with errStopped (the items are not done: the next owner gets them).
func (d *destination) persist(ctx context.Context, what string, write func(context.Context) error) error {
	delay := d.cfg.StoreRetryDelay
	var err error
	for attempt := 1; ; attempt++ {
		if err = write(ctx); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return errStopped
		}
		d.m.storeErrors.Inc()
		if attempt >= d.cfg.StoreAttempts {
			break
		}
		d.log.Warn(what+" failed; retrying", "destination", d.name, "err", err, "in", delay)
		if err := d.pause(ctx, delay); err != nil {
			return err
		}
		delay *= 2
	}
	return fmt.Errorf("%s for %s: %w", what, d.name, err)
}

// succeed ends d's backoff after the destination accepted a transaction, in
// memory and stored.
func (d *destination) succeed(ctx context.Context) {
	d.mu.Lock()
	was := d.retry.Interval > 0
	if was {
		d.setRetry(d.retry.succeed())
	}
	d.mu.Unlock()
	if !was {
		return
	}
	if err := d.store.SaveRetry(ctx, d.name, RetryState{}); err != nil && ctx.Err() == nil {
		// Harmless: the stored backoff only delays the next wake-up.
		d.m.storeErrors.Inc()
		d.log.Warn("clearing backoff", "destination", d.name, "err", err)
	}
}

// recordSuccess notes what the destination accepted of each room, in memory
// and in the store (with its last successful position). A failed write only
// leaves the operator's view behind, and lets a replay after a restart send
// those PDUs again; it is logged and counted.
func (d *destination) recordSuccess(ctx context.Context, acked []RoomPosition) {
	if len(acked) == 0 {
		return
	}
	d.mu.Lock()
	if d.seen != nil {
		for _, a := range acked {
			d.seen[a.RoomID] = max(d.seen[a.RoomID], a.Position)
		}
	}
	d.mu.Unlock()
	if err := d.store.RecordSuccess(ctx, d.name, acked); err != nil && ctx.Err() == nil {
		d.m.storeErrors.Inc()
		d.log.Warn("recording last successful position", "destination", d.name, "err", err)
	}
}
