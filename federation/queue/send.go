package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/txn"
)

// errStopped is returned by transmit when the queue was stopped during a retry
// pause: the transaction's items stay undone and go to the next owner.
var errStopped = errors.New("destination queue stopped")

// sendLoop sends q's live items, one transaction at a time, until q is empty,
// stopping, or the destination fails. It returns an error only when a backoff
// could not be stored (Run then fails).
func (m *Manager) sendLoop(ctx context.Context, q *destQueue) error {
	for {
		q.mu.Lock()
		if q.stopping || ctx.Err() != nil || (len(q.pdus) == 0 && len(q.edus) == 0 && len(q.presence) == 0) {
			q.finish()
			q.mu.Unlock()
			return nil
		}
		np := min(len(q.pdus), txn.MaxPDUs)
		pdus := append([]Item(nil), q.pdus[:np]...)
		q.pdus = q.pdus[np:]
		var edus, more []Item
		if p, ok := q.takePresence(maxPresenceUsers); ok {
			edus = append(edus, p)
		}
		more, q.edus = takeEDUs(q.edus, txn.MaxEDUs-len(edus))
		edus = append(edus, more...)
		q.mu.Unlock()

		failed, err := m.deliver(ctx, q, pdus, edus)
		if err != nil {
			return err
		}
		if failed {
			return nil
		}
	}
}

// deliver sends pdus and edus in one transaction and calls their Done once the
// destination accepted it. A PDU or EDU that can never be sent (too large, not
// canonical JSON: txn.ItemError) is dropped, counted and done, and the rest
// sent in a new transaction. failed reports that the destination was backed
// off (its items were then moved to catch-up) or the queue was stopped.
func (m *Manager) deliver(ctx context.Context, q *destQueue, pdus, edus []Item) (failed bool, err error) {
	for len(pdus)+len(edus) > 0 {
		t := m.newTxn(q.dest)
		pdus, edus = m.fill(q.dest, t, pdus, edus)
		if t.Empty() {
			return false, nil
		}
		resp, err := m.transmit(ctx, q, t)
		if err == nil {
			m.m.pdusSent.Add(float64(len(t.PDUs)))
			m.m.edusSent.Add(float64(len(t.EDUs)))
			for id, reason := range resp.Errors() {
				m.m.pduRejected.Inc()
				m.log.Warn("destination rejected a PDU", "destination", q.dest, "event_id", id, "error", reason)
			}
			var last int64
			for _, it := range pdus {
				last = max(last, it.Position)
			}
			m.recordSuccess(ctx, q, last)
			done(pdus)
			done(edus)
			return false, nil
		}
		if errors.Is(err, errStopped) || ctx.Err() != nil {
			return true, nil // not done: redelivered to the next owner
		}
		if m.cfg.Classify(err) != Fatal {
			return true, m.backOff(ctx, q, append(pdus, edus...), err)
		}
		var ie *txn.ItemError
		if errors.As(err, &ie) {
			var bad Item
			switch {
			case ie.Kind == "pdu" && ie.Index < len(pdus):
				bad, pdus = pdus[ie.Index], append(pdus[:ie.Index:ie.Index], pdus[ie.Index+1:]...)
			case ie.Kind == "edu" && ie.Index < len(edus):
				bad, edus = edus[ie.Index], append(edus[:ie.Index:ie.Index], edus[ie.Index+1:]...)
			default:
				ie = nil
			}
			if ie != nil {
				m.m.dropped.WithLabelValues(ie.Kind, "unsendable").Inc()
				m.log.Error("dropping a PDU or EDU that can never be sent; sending the rest", "destination", q.dest, "event_id", bad.EventID, "kind", ie.Kind, "err", err)
				bad.Done()
				continue
			}
		}
		m.log.Error("destination refused our transaction as malformed; dropping it", "destination", q.dest, "txn", t.ID, "pdus", len(t.PDUs), "edus", len(t.EDUs), "err", err)
		m.m.dropped.WithLabelValues("pdu", "fatal").Add(float64(len(pdus)))
		m.m.dropped.WithLabelValues("edu", "fatal").Add(float64(len(edus)))
		done(pdus)
		done(edus)
		return false, nil
	}
	return false, nil
}

// fill adds pdus and edus to t and returns those it holds, in order (so a
// txn.ItemError index names an item). One that can never be added is dropped
// and done. Presence is rendered here, aged to t's origin_server_ts: a
// destination whose queue was slow gets the age at sending, not at enqueueing.
// (A retry of t resends these bytes: it must be the same transaction.)
func (m *Manager) fill(dest string, t *txn.Transaction, pdus, edus []Item) (inPDUs, inEDUs []Item) {
	for _, it := range pdus {
		if err := t.AddPDU(it.PDU); err != nil {
			m.m.dropped.WithLabelValues("pdu", "unsendable").Inc()
			m.log.Error("dropping a PDU that can never be sent", "destination", dest, "event_id", it.EventID, "err", err)
			it.Done()
			continue
		}
		inPDUs = append(inPDUs, it)
	}
	built := time.UnixMilli(t.OriginServerTS)
	for _, it := range edus {
		e, err := render(it, built)
		if err == nil {
			err = t.AddEDU(e)
		}
		if err != nil {
			m.m.dropped.WithLabelValues("edu", "unsendable").Inc()
			m.log.Error("dropping an EDU that can never be sent", "destination", dest, "edu_type", eduType(it), "err", err)
			it.Done()
			continue
		}
		inEDUs = append(inEDUs, it)
	}
	return inPDUs, inEDUs
}

// newTxn starts a transaction with a new id: this process's start time plus a
// counter, unique per destination across restarts, as Synapse does.
func (m *Manager) newTxn(dest string) *txn.Transaction {
	return &txn.Transaction{ID: fmt.Sprintf("%s.%d", m.txnBase, m.txnSeq.Add(1)), Origin: m.cfg.Origin, Destination: dest, OriginServerTS: m.cfg.Now().UnixMilli()}
}

func done(items []Item) {
	for _, it := range items {
		it.Done()
	}
}

// transmit sends t, and sends it again with the same transaction id after a
// pause (RetryAttempts times) while it fails with Retry, as Synapse's long
// retries do: a receiver that processed a first attempt whose answer was lost
// dedupes the retry by its id.
func (m *Manager) transmit(ctx context.Context, q *destQueue, t *txn.Transaction) (txn.Response, error) {
	delay := m.cfg.RetryDelay
	for attempt := 0; ; attempt++ {
		start := m.cfg.Now()
		resp, err := m.t.SendTransaction(ctx, t)
		m.m.sendSeconds.Observe(m.cfg.Now().Sub(start).Seconds())
		if err == nil {
			m.m.txns.WithLabelValues("ok").Inc()
			return resp, nil
		}
		if ctx.Err() != nil {
			return resp, err
		}
		outcome := m.cfg.Classify(err)
		switch outcome {
		case Fatal:
			m.m.txns.WithLabelValues("fatal").Inc()
		default:
			m.m.txns.WithLabelValues("failed").Inc()
		}
		if outcome != Retry || attempt >= m.cfg.RetryAttempts {
			return resp, err
		}
		m.m.retries.Inc()
		m.log.Info("transaction failed; retrying it", "destination", q.dest, "txn", t.ID, "in", delay, "err", err)
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return resp, err
		case <-q.stopped:
			timer.Stop()
			return resp, errStopped
		case <-timer.C:
		}
		delay *= 2
	}
}

// backOff records the failure and moves everything pending for q to catch-up:
// the latest position per room of its PDUs (these and all queued) is stored,
// its EDUs and presence are dropped, and all are done. New PDUs go to the
// store from now on.
func (m *Manager) backOff(ctx context.Context, q *destQueue, inFlight []Item, cause error) error {
	q.mu.Lock()
	items := append(append(append([]Item(nil), inFlight...), q.pdus...), q.edus...)
	q.pdus, q.edus = nil, nil
	presence := q.dropPresence()
	interval := m.cfg.nextInterval(q.retry.Interval)
	q.retry = RetryState{Interval: interval, NextAttempt: m.cfg.Now().Add(m.cfg.jitter(interval, m.cfg.Rand()))}
	r := q.retry
	q.mu.Unlock()
	m.log.Warn("destination failing; backing off", "destination", q.dest, "interval", interval, "until", r.NextAttempt, "err", cause)
	m.m.backoffs.Inc()
	latest := map[string]CatchUp{}
	for _, it := range items {
		if !it.isPDU() {
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
	err := m.persist(ctx, q, "recording backoff", func(ctx context.Context) error { return m.store.SaveRetry(ctx, q.dest, r) })
	if err == nil {
		err = m.persist(ctx, q, "recording catch-up", func(ctx context.Context) error { return m.store.RecordCatchUp(ctx, q.dest, rooms) })
	}
	if errors.Is(err, errStopped) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, it := range items {
		if it.isPDU() {
			m.m.pdusToCatchUp.Inc()
		} else {
			m.m.edusDropped.WithLabelValues(eduType(it)).Add(float64(eduCount(it)))
		}
		it.Done()
	}
	m.m.edusDropped.WithLabelValues(edu.TypePresence).Add(float64(len(presence)))
	releaseAll(presence)
	return nil
}

// persist runs a store write the queue cannot go on without, retrying with
// doubling pauses. Giving up returns an error for Run: the items involved are
// not done, and a restart redelivers them. Stopping or shutting down gives up
// with errStopped (the items are not done: the next owner gets them).
func (m *Manager) persist(ctx context.Context, q *destQueue, what string, write func(context.Context) error) error {
	delay := m.cfg.StoreRetryDelay
	var err error
	for attempt := 1; ; attempt++ {
		if err = write(ctx); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return errStopped
		}
		m.m.storeErrors.Inc()
		if attempt >= m.cfg.StoreAttempts {
			break
		}
		m.log.Warn(what+" failed; retrying", "destination", q.dest, "err", err, "in", delay)
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return errStopped
		case <-q.stopped:
			timer.Stop()
			return errStopped
		case <-timer.C:
		}
		delay *= 2
	}
	return fmt.Errorf("%s for %s: %w", what, q.dest, err)
}
