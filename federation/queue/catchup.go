package queue

import (
	"context"
	"time"
)

// catchUpLoop wakes destinations whose backoff ended and that missed events,
// a bounded number per tick.
func (m *Manager) catchUpLoop(ctx context.Context) error {
	t := time.NewTicker(m.cfg.CatchUpInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		due, err := m.store.DueDestinations(ctx, m.cfg.Now(), m.cfg.WakeupsPerTick)
		if err != nil {
			m.log.Warn("listing destinations due for catch-up", "err", err)
			continue
		}
		for _, dest := range due {
			m.mu.Lock()
			_, queued := m.queues[dest]
			m.mu.Unlock()
			if !queued && (m.cfg.Owns == nil || !m.cfg.Owns(dest)) {
				continue // another member's destination
			}
			q := m.queue(dest)
			q.mu.Lock()
			if q.running || q.stopping {
				q.mu.Unlock()
				continue
			}
			q.running, q.catchingUp = true, true
			q.idle = make(chan struct{})
			q.mu.Unlock()
			if err := m.spawn(q, m.catchUp); err != nil {
				return nil
			}
		}
	}
}

// catchUp sends the latest missed event of each room, one room per
// transaction, then clears the backoff and resumes live sending. A failure
// backs the destination off again.
func (m *Manager) catchUp(ctx context.Context, q *destQueue) {
	m.m.catchUps.Inc()
	for ctx.Err() == nil {
		rooms, err := m.store.CatchUpRooms(ctx, q.dest)
		if err != nil {
			m.log.Warn("reading catch-up rooms", "destination", q.dest, "err", err)
			break
		}
		if len(rooms) == 0 {
			q.mu.Lock()
			q.retry = RetryState{}
			q.catchingUp = false
			q.mu.Unlock()
			if err := m.store.SaveRetry(ctx, q.dest, RetryState{}); err != nil {
				m.log.Warn("clearing backoff", "destination", q.dest, "err", err)
			}
			m.log.Info("destination caught up", "destination", q.dest)
			break
		}
		for _, c := range rooms {
			q.mu.Lock()
			stopping := q.stopping
			q.mu.Unlock()
			if stopping || ctx.Err() != nil {
				break
			}
			if len(c.PDU) == 0 {
				_ = m.store.ClearCatchUp(ctx, q.dest, c) // the event is gone: nothing to send
				continue
			}
			t := m.newTxn(q.dest)
			_ = t.AddPDU(c.PDU)
			if _, err := m.t.SendTransaction(ctx, t); err != nil {
				if ctx.Err() != nil {
					break
				}
				if m.cfg.Classify(err) != Fatal {
					q.mu.Lock()
					q.catchingUp = false
					q.mu.Unlock()
					if berr := m.backOff(ctx, q, nil, err); berr != nil {
						m.log.Warn("recording backoff", "destination", q.dest, "err", berr)
					}
					return
				}
				m.log.Error("destination refused a catch-up transaction as malformed; skipping the room", "destination", q.dest, "room", c.RoomID, "err", err)
			} else {
				m.m.pdusSent.Inc()
			}
			if err := m.store.ClearCatchUp(ctx, q.dest, c); err != nil {
				m.log.Warn("clearing catch-up row", "destination", q.dest, "err", err)
			}
		}
	}
	q.mu.Lock()
	q.catchingUp = false
	q.finish()
	q.mu.Unlock()
}
