package queue

import (
	"context"
	"errors"

	"github.com/fedpipe/fedpipe/federation/txn"
)

// catchUp sends the latest missed event of each room, one room per
// transaction, oldest first. The backoff ends at the first accepted
// transaction, as Synapse does; a failure backs d off again. live reports
// that d is caught up and its worker goes on to send what is queued.
func (d *destination) catchUp(ctx context.Context) (live bool, err error) {
	d.m.catchUps.Inc()
	// The store's word, not the one in memory: an operator may have reset,
	// paused or resumed d.
	if err := d.load(ctx); err != nil {
		d.m.storeErrors.Inc()
		d.log.Warn("loading backoff for catch-up", "destination", d.name, "err", err)
		return false, d.leave(ctx) // woken again later
	}
	d.mu.Lock()
	failing := d.retry.Failing(d.cfg.Now())
	d.mu.Unlock()
	if failing {
		return false, d.leave(ctx)
	}
	for {
		if d.halted(ctx) {
			return false, nil
		}
		d.mu.Lock()
		seen := d.recorded
		d.mu.Unlock()
		rooms, err := d.store.CatchUpRooms(ctx, d.name, d.cfg.CatchUpBatch)
		if err != nil {
			if ctx.Err() == nil {
				d.m.storeErrors.Inc()
				d.log.Warn("reading catch-up rooms", "destination", d.name, "err", err)
			}
			return false, d.leave(ctx)
		}
		if len(rooms) == 0 {
			d.mu.Lock()
			// A PDU recorded since the read would be stranded: read again.
			quiet := d.recording == 0 && d.recorded == seen
			if quiet {
				d.catchingUp, d.behind = false, false
			}
			d.mu.Unlock()
			if !quiet {
				continue
			}
			d.log.Info("destination caught up", "destination", d.name)
			return true, nil
		}
		for _, c := range rooms {
			if d.halted(ctx) {
				return false, nil
			}
			if ended, err := d.catchUpRoom(ctx, c); ended || err != nil {
				return false, err
			}
		}
	}
}

// leave ends a catch-up that cannot go on now (d is failing, or the store
// failed). d stays behind, so it is tried again when it is woken next; what
// is pending (an EDU that woke it) is shed. The worker exits after it, and
// only its exit ends catchingUp: meanwhile nothing new is queued.
func (d *destination) leave(ctx context.Context) error {
	d.mu.Lock()
	held := d.pending.drain()
	d.mu.Unlock()
	if err := d.shed(ctx, held); err != nil && !errors.Is(err, errStopped) {
		return err
	}
	return nil
}

// catchUpRoom sends one room's latest missed event. ended reports that the
// catch-up ended: stopped, or the destination failed and was backed off.
func (d *destination) catchUpRoom(ctx context.Context, c CatchUp) (ended bool, err error) {
	t := d.newTxn()
	if len(c.PDU) == 0 {
		d.log.Warn("catch-up event is not stored; skipping the room", "destination", d.name, "room", c.RoomID, "event_id", c.EventID)
	} else if aerr := t.AddPDU(c.PDU); aerr != nil {
		d.m.dropped.WithLabelValues("pdu", "unsendable").Inc()
		d.log.Error("dropping a catch-up PDU that can never be sent", "destination", d.name, "event_id", c.EventID, "err", aerr)
	} else if _, serr := d.transmit(ctx, t); serr != nil {
		switch {
		case errors.Is(serr, errStopped) || errors.Is(serr, errFenceLost) || ctx.Err() != nil:
			return true, nil // the room stays recorded
		case txn.OutcomeOf(serr) == txn.Fatal:
			d.m.dropped.WithLabelValues("pdu", "fatal").Inc()
			d.log.Error("destination refused a catch-up transaction as malformed; skipping the room", "destination", d.name, "room", c.RoomID, "event_id", c.EventID, "err", serr)
		default:
			return true, d.backOff(ctx, batch{}, serr)
		}
	} else {
		d.m.pdusSent.Inc()
		d.m.catchUpSent.Inc()
		d.succeed(ctx)
		d.recordSuccess(ctx, []RoomPosition{{RoomID: c.RoomID, Position: c.Position}})
	}
	if err := d.store.ClearCatchUp(ctx, d.name, c); err != nil && ctx.Err() == nil {
		// Harmless: the room is sent again at the next catch-up.
		d.m.storeErrors.Inc()
		d.log.Warn("clearing catch-up row", "destination", d.name, "room", c.RoomID, "err", err)
	}
	return false, nil
}
