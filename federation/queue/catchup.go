package queue

import (
	"context"
	"errors"
	"time"
)

// catchUpLoop wakes destinations whose backoff ended and that missed events,
// a bounded number per tick.
func (m *Manager) catchUpLoop(ctx context.Context) error {
	t := time.NewTicker(m.cfg.CatchUpInterval)
	defer t.Stop()
	var after string // pages through the due destinations, one page per tick
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		due, err := m.store.DueDestinations(ctx, m.cfg.Now(), after, m.cfg.WakeupsPerTick)
		if err != nil {
			if ctx.Err() == nil {
				m.m.storeErrors.Inc()
				m.log.Warn("listing destinations due for catch-up", "err", err)
			}
			continue
		}
		after = ""
		if len(due) == m.cfg.WakeupsPerTick {
			after = due[len(due)-1]
		}
		for _, dest := range due {
			q := m.claim(dest)
			if q == nil {
				continue
			}
			if err := m.spawn(q, m.catchUp); err != nil {
				return nil // Run is ending
			}
		}
	}
}

// claim returns dest's queue with its worker slot taken for catch-up, or nil
// when dest is not this member's, is busy, stopping or still backing off.
// Ownership is checked again under q.mu: a partition's Close gives up
// ownership before it stops the partition's queues, so either Stop sees the
// worker claimed here and waits for it, or the check here fails.
func (m *Manager) claim(dest string) *destQueue {
	m.mu.Lock()
	q, ok := m.queues[dest]
	if !ok {
		if m.cfg.Owns == nil || !m.cfg.Owns(dest) {
			m.mu.Unlock()
			return nil // another member's destination
		}
		q = &destQueue{dest: dest, stopped: make(chan struct{})}
		m.queues[dest] = q
		m.m.destinations.Set(float64(len(m.queues)))
	}
	m.mu.Unlock()
	q.mu.Lock()
	defer q.mu.Unlock()
	// The store's word, not the cached backoff, decides: an operator may have
	// reset it. catchUp reloads it.
	if q.running || q.stopping {
		return nil
	}
	if m.cfg.Owns != nil && !m.cfg.Owns(dest) {
		return nil
	}
	q.running, q.catchingUp = true, true
	q.idle = make(chan struct{})
	return q
}

// load reads q's backoff from the store the first time q is used, so a
// destination taken over from another member (or a restart) keeps its schedule.
func (m *Manager) load(ctx context.Context, q *destQueue) error {
	q.mu.Lock()
	loaded := q.loaded
	q.mu.Unlock()
	if loaded {
		return nil
	}
	r, err := m.store.LoadRetry(ctx, q.dest)
	if err != nil {
		return err
	}
	q.mu.Lock()
	if !q.loaded {
		q.retry, q.loaded = r, true
	}
	q.mu.Unlock()
	return nil
}

// catchUp sends the latest missed event of each room, one room per
// transaction, then resumes live sending in the same worker. The backoff is
// cleared at the first accepted transaction, as Synapse does; a failure backs
// the destination off again.
func (m *Manager) catchUp(ctx context.Context, q *destQueue) error {
	m.m.catchUps.Inc()
	leave := func() {
		q.mu.Lock()
		q.catchingUp = false
		q.mu.Unlock()
	}
	q.mu.Lock()
	q.loaded = false // reload: an operator may have reset, paused or resumed it
	q.mu.Unlock()
	if err := m.load(ctx, q); err != nil {
		m.m.storeErrors.Inc()
		m.log.Warn("loading backoff for catch-up", "destination", q.dest, "err", err)
		leave()
		return nil // woken again at a later tick
	}
	q.mu.Lock()
	failing := q.retry.Failing(m.cfg.Now())
	q.mu.Unlock()
	if failing {
		leave()
		return nil
	}
	for {
		if m.stopping(ctx, q) {
			leave()
			return nil
		}
		q.mu.Lock()
		seen := q.recorded
		q.mu.Unlock()
		rooms, err := m.store.CatchUpRooms(ctx, q.dest, m.cfg.CatchUpBatch)
		if err != nil {
			if ctx.Err() == nil {
				m.m.storeErrors.Inc()
				m.log.Warn("reading catch-up rooms", "destination", q.dest, "err", err)
			}
			leave()
			return nil
		}
		if len(rooms) == 0 {
			m.clearBackoff(ctx, q)
			q.mu.Lock()
			// A PDU recorded since the read would be stranded: read again.
			quiet := q.recording == 0 && q.recorded == seen
			if quiet {
				q.catchingUp = false
			}
			q.mu.Unlock()
			if !quiet {
				continue
			}
			m.log.Info("destination caught up", "destination", q.dest)
			return m.sendLoop(ctx, q) // live items enqueued from now on
		}
		for _, c := range rooms {
			if m.stopping(ctx, q) {
				leave()
				return nil
			}
			if done, err := m.catchUpRoom(ctx, q, c); done || err != nil {
				leave()
				return err
			}
		}
	}
}

// catchUpRoom sends one room's latest missed event. done reports that the
// catch-up ended: stopped, or the destination failed and was backed off.
func (m *Manager) catchUpRoom(ctx context.Context, q *destQueue, c CatchUp) (done bool, err error) {
	t := m.newTxn(q.dest)
	if len(c.PDU) == 0 {
		m.log.Warn("catch-up event is not stored; skipping the room", "destination", q.dest, "room", c.RoomID, "event_id", c.EventID)
	} else if aerr := t.AddPDU(c.PDU); aerr != nil {
		m.m.dropped.WithLabelValues("pdu", "unsendable").Inc()
		m.log.Error("dropping a catch-up PDU that can never be sent", "destination", q.dest, "event_id", c.EventID, "err", aerr)
	} else if _, serr := m.transmit(ctx, q, t); serr != nil {
		switch {
		case errors.Is(serr, errStopped) || ctx.Err() != nil:
			return true, nil
		case m.cfg.Classify(serr) != Fatal:
			return true, m.backOff(ctx, q, nil, serr)
		}
		m.m.dropped.WithLabelValues("pdu", "fatal").Inc()
		m.log.Error("destination refused a catch-up transaction as malformed; skipping the room", "destination", q.dest, "room", c.RoomID, "event_id", c.EventID, "err", serr)
	} else {
		m.m.pdusSent.Inc()
		m.m.catchUpSent.Inc()
		m.clearBackoff(ctx, q)
		m.recordSuccess(ctx, q, c.Position)
	}
	if err := m.store.ClearCatchUp(ctx, q.dest, c); err != nil && ctx.Err() == nil {
		// Harmless: the room is sent again at the next catch-up.
		m.m.storeErrors.Inc()
		m.log.Warn("clearing catch-up row", "destination", q.dest, "room", c.RoomID, "err", err)
	}
	return false, nil
}

// clearBackoff forgets q's backoff after a success, in memory and stored.
func (m *Manager) clearBackoff(ctx context.Context, q *destQueue) {
	q.mu.Lock()
	was := q.retry.Interval > 0
	q.retry = RetryState{}
	q.mu.Unlock()
	if !was {
		return
	}
	if err := m.store.SaveRetry(ctx, q.dest, RetryState{}); err != nil && ctx.Err() == nil {
		// Harmless: the stored backoff only delays the next wake-up.
		m.m.storeErrors.Inc()
		m.log.Warn("clearing backoff", "destination", q.dest, "err", err)
	}
}

// recordSuccess stores the destination's last successful position. A failure
// only leaves the operator's view behind; it is logged and counted.
func (m *Manager) recordSuccess(ctx context.Context, q *destQueue, position int64) {
	if position <= 0 {
		return
	}
	if err := m.store.RecordSuccess(ctx, q.dest, position); err != nil && ctx.Err() == nil {
		m.m.storeErrors.Inc()
		m.log.Warn("recording last successful position", "destination", q.dest, "err", err)
	}
}

// stopping reports whether q's worker should leave now.
func (m *Manager) stopping(ctx context.Context, q *destQueue) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.stopping || ctx.Err() != nil
}
