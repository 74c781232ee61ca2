package queue

import (
	"context"
	"time"
)

// paceCatchUp wakes destinations whose backoff ended and that missed events,
// a bounded number per tick, spread evenly over the tick.
func (m *Manager) paceCatchUp(ctx context.Context) error {
	cfg := &m.env.cfg
	t := time.NewTicker(cfg.CatchUpInterval)
	defer t.Stop()
	var after string // pages through the due destinations, one page per tick
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		due, err := m.env.store.DueDestinations(ctx, cfg.Now(), after, cfg.WakeupsPerTick)
		if err != nil {
			if ctx.Err() == nil {
				m.env.m.storeErrors.Inc()
				m.env.log.Warn("listing destinations due for catch-up", "err", err)
			}
			continue
		}
		after = ""
		if len(due) == cfg.WakeupsPerTick {
			after = due[len(due)-1]
		}
		// One wake-up every CatchUpInterval/WakeupsPerTick, not all at the
		// tick: a burst of catch-up workers starting together queues their
		// store round trips (and fence takes) in front of the healthy
		// destinations' for that moment, and their p99 is that queue.
		gap := cfg.CatchUpInterval / time.Duration(cfg.WakeupsPerTick)
		for i, dest := range due {
			if i > 0 && m.sleep(ctx, gap) != nil {
				return nil
			}
			d, idle := m.claim(dest)
			if d == nil {
				continue
			}
			if err := d.launch(idle); err != nil {
				return nil // Run is ending
			}
		}
	}
}

// claim returns dest's destination with its worker slot taken for catch-up,
// or nil when dest is not this member's, is busy or stopping. Ownership is
// checked again under the destination's lock: a partition's Close gives up
// ownership before it stops the partition's destinations, so either Stop
// sees the worker claimed here and waits for it, or the check here fails.
// Whether it is still backing off is for the catch-up to read from the store.
func (m *Manager) claim(dest string) (*destination, chan struct{}) {
	owns := m.env.cfg.Owns
	m.mu.Lock()
	d, ok := m.dests[dest]
	if !ok {
		if owns == nil || !owns(dest) {
			m.mu.Unlock()
			return nil, nil // another member's destination
		}
		d = newDestination(dest, m.env)
		m.dests[dest] = d
		m.env.m.destinations.Set(float64(len(m.dests)))
	}
	m.mu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	if owns != nil && !owns(dest) {
		return nil, nil
	}
	idle := d.wake(true)
	if idle == nil {
		return nil, nil
	}
	return d, idle
}

// sleep waits for d; ctx's error when ctx ends first.
func (m *Manager) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
