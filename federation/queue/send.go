package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fedpipe/fedpipe/federation/txn"
)

// errStopped is returned by transmit and persist when the destination was
// stopped during a pause: the items involved stay undone and go to the next
// owner.
var errStopped = errors.New("destination stopped")

// work catches d up first when its worker was woken for that, then sends
// what is queued until nothing is, d stops, or d fails.
func (d *destination) work(ctx context.Context) error {
	d.mu.Lock()
	catchUp := d.catchingUp
	d.mu.Unlock()
	if catchUp {
		if live, err := d.catchUp(ctx); !live || err != nil {
			return err
		}
	}
	return d.sendLive(ctx)
}

// sendLive sends d's queued items, one transaction at a time, the first
// after Config.Linger.
func (d *destination) sendLive(ctx context.Context) error {
	if d.cfg.Linger > 0 {
		_ = d.pause(ctx, d.cfg.Linger) // stopped: the loop sees it
	}
	for {
		d.mu.Lock()
		if d.stopping || ctx.Err() != nil || d.pending.empty() {
			d.finish()
			d.mu.Unlock()
			return nil
		}
		if d.retry.Paused { // paused by an operator while sending (SetPaused)
			d.mu.Unlock()
			return d.leave(ctx)
		}
		d.mu.Unlock()
		if err := d.readDurables(ctx); err != nil {
			d.m.storeErrors.Inc()
			d.log.Warn("reading stored EDUs; sending the rest", "destination", d.name, "err", err)
			if d.pause(ctx, d.cfg.StoreRetryDelay) != nil {
				return nil // stopped: the next owner reads them
			}
		}
		d.mu.Lock()
		if d.stopping || ctx.Err() != nil {
			d.finish()
			d.mu.Unlock()
			return nil
		}
		b := d.pending.take()
		d.mu.Unlock()
		failed, err := d.deliver(ctx, b)
		d.flushAcks(ctx)
		if failed || err != nil {
			return err
		}
	}
}

// deliver sends b, in as many transactions as it takes (one, unless the
// body would grow too large), and calls each item's done once the
// destination accepted it. A PDU or EDU that can never be sent (too large,
// not canonical JSON: txn.ItemError) is dropped, counted and done, and the
// rest sent in a new transaction. failed reports that the destination was
// backed off (its items were then recorded for catch-up or dropped) or d was
// stopped.
func (d *destination) deliver(ctx context.Context, b batch) (failed bool, err error) {
	for !b.empty() {
		t := d.newTxn()
		var in batch
		in, b = d.fill(t, b)
		if t.Empty() {
			continue
		}
		d.markSending(ctx, in, true)
		resp, err := d.transmit(ctx, t)
		// Stopped or fenced off mid-send, d cannot know whether the
		// destination accepted t: the marks stay, as a crash leaves them.
		// Any other failure is an answer (or none, which the retries
		// took as one): t was not accepted.
		uncertain := errors.Is(err, errStopped) || ctx.Err() != nil || errors.Is(err, errFenceLost)
		if err != nil && !uncertain {
			d.markSending(ctx, in, false)
		}
		switch {
		case err == nil:
			d.delivered(ctx, t, resp, in)
			continue
		case errors.Is(err, errStopped) || ctx.Err() != nil:
			return true, nil // not done: redelivered to the next owner
		case errors.Is(err, errFenceLost):
			d.mu.Lock()
			d.pending.retry = in.then(b) // sent first once the fence is held again
			d.mu.Unlock()
			return true, nil
		case txn.OutcomeOf(err) != txn.Fatal:
			return true, d.backOff(ctx, in.then(b), err)
		}
		if rest, ok := d.dropItem(in, err); ok {
			b = rest.then(b)
			continue
		}
		d.log.Error("destination refused our transaction as malformed; dropping it", "destination", d.name, "txn", t.ID, "pdus", len(t.PDUs), "edus", len(t.EDUs), "err", err)
		d.m.dropped.WithLabelValues("pdu", "fatal").Add(float64(len(in.pdus)))
		d.m.dropped.WithLabelValues("edu", "fatal").Add(float64(len(in.edus)))
		in.done()
	}
	return false, nil
}

// dropItem drops, counts and completes the item of in that err (a
// txn.ItemError) names, and returns the rest; ok is false when err names none.
func (d *destination) dropItem(in batch, err error) (rest batch, ok bool) {
	var ie *txn.ItemError
	if !errors.As(err, &ie) {
		return in, false
	}
	var done func()
	var id string
	switch i := ie.Index; {
	case ie.Kind == "pdu" && i < len(in.pdus):
		done, id = in.pdus[i].done, in.pdus[i].EventID
		in.pdus = append(in.pdus[:i:i], in.pdus[i+1:]...)
	case ie.Kind == "edu" && i < len(in.edus):
		done = in.edus[i].done
		in.edus = append(in.edus[:i:i], in.edus[i+1:]...)
	default:
		return in, false
	}
	d.m.dropped.WithLabelValues(ie.Kind, "unsendable").Inc()
	d.log.Error("dropping a PDU or EDU that can never be sent; sending the rest", "destination", d.name, "event_id", id, "kind", ie.Kind, "err", err)
	done()
	return in, true
}

// fill adds b's items to t, in order, and returns those t holds (in order, so
// a txn.ItemError index names one) and those that did not fit, for the next
// transaction. One that can never be added is dropped and done. Presence is
// rendered here, aged to t's origin_server_ts: a destination whose queue was
// slow gets the age at sending, not at queueing. (A retry of t resends these
// bytes: it must be the same transaction.)
func (d *destination) fill(t *txn.Transaction, b batch) (in, next batch) {
	for i, it := range b.pdus {
		err := t.AddPDU(it.JSON)
		if errors.Is(err, txn.ErrFull) && !t.Empty() {
			next.pdus = b.pdus[i:]
			break
		}
		if err != nil {
			d.m.dropped.WithLabelValues("pdu", "unsendable").Inc()
			d.log.Error("dropping a PDU that can never be sent", "destination", d.name, "event_id", it.EventID, "err", err)
			it.done()
			continue
		}
		in.pdus = append(in.pdus, it)
	}
	built := time.UnixMilli(t.OriginServerTS)
	for i, it := range b.edus {
		e, err := it.build(built)
		if err == nil {
			err = t.AddEDU(e)
		}
		if errors.Is(err, txn.ErrFull) && !t.Empty() {
			next.edus = b.edus[i:]
			break
		}
		if err != nil {
			d.m.dropped.WithLabelValues("edu", "unsendable").Inc()
			d.log.Error("dropping an EDU that can never be sent", "destination", d.name, "edu_type", eduType(it.typ), "err", err)
			it.done()
			continue
		}
		in.edus = append(in.edus, it)
	}
	return in, next
}

// delivered completes the items of t, which the destination accepted, and
// ends d's backoff if it had one.
func (d *destination) delivered(ctx context.Context, t *txn.Transaction, resp txn.Response, in batch) {
	d.m.pdusSent.Add(float64(len(t.PDUs)))
	for _, e := range t.EDUs {
		d.m.edusSent.WithLabelValues(eduType(e.Type)).Inc()
	}
	for id, reason := range resp.Errors() {
		d.m.pduRejected.Inc()
		d.log.Warn("destination rejected a PDU", "destination", d.name, "event_id", id, "error", reason)
	}
	acked := make([]RoomPosition, 0, len(in.pdus))
	for _, it := range in.pdus {
		acked = append(acked, RoomPosition{RoomID: it.RoomID, Position: it.Position})
	}
	d.succeed(ctx)
	d.recordSuccess(ctx, acked)
	in.done()
}

// done calls the done of every item of b.
func (b batch) done() {
	for _, it := range b.pdus {
		it.done()
	}
	for _, it := range b.edus {
		it.done()
	}
}

// newTxn starts a transaction with a new id.
func (d *destination) newTxn() *txn.Transaction {
	return &txn.Transaction{ID: fmt.Sprintf("%s.%d", d.txnBase, d.txnSeq.Add(1)), Origin: d.cfg.Origin, Destination: d.name,
		OriginServerTS: d.cfg.Now().UnixMilli(), MaxBytes: d.cfg.MaxTransactionBytes}
}

// transmit sends t, and sends it again with the same transaction id after a
// pause (RetryAttempts times) while it fails with txn.Retry, as Synapse's long
// retries do: a receiver that processed a first attempt whose answer was lost
// dedupes the retry by its id.
func (d *destination) transmit(ctx context.Context, t *txn.Transaction) (txn.Response, error) {
	delay := d.cfg.RetryDelay
	for attempt := 0; ; attempt++ {
		start := d.cfg.Now()
		sctx := d.sendContext(ctx)
		resp, err := d.t.SendTransaction(sctx, t)
		d.m.sendSeconds.Observe(d.cfg.Now().Sub(start).Seconds())
		if err == nil {
			d.m.txns.WithLabelValues("ok").Inc()
			return resp, nil
		}
		if ctx.Err() != nil {
			return resp, err
		}
		if sctx.Err() != nil {
			return resp, errFenceLost
		}
		outcome := txn.OutcomeOf(err)
		if outcome == txn.Fatal {
			d.m.txns.WithLabelValues("fatal").Inc()
		} else {
			d.m.txns.WithLabelValues("failed").Inc()
		}
		if outcome != txn.Retry || attempt >= d.cfg.RetryAttempts {
			return resp, err
		}
		d.m.retries.Inc()
		d.log.Info("transaction failed; retrying it", "destination", d.name, "txn", t.ID, "in", delay, "err", err)
		if err := d.pause(ctx, delay); err != nil {
			return resp, err
		}
		delay *= 2
	}
}

// pause waits for delay; errStopped when ctx ends or d stops first.
func (d *destination) pause(ctx context.Context, delay time.Duration) error {
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return errStopped
	case <-d.stopped:
		return errStopped
	case <-timer.C:
		return nil
	}
}
