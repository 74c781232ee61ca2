package usersync

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fedpipe/fedpipe/schema"
)

// Run keeps the instance known to the presence stage until ctx ends. It first
// clears the instance (ending syncs a crashed predecessor left) and writes
// user_sync for the users already syncing, then every AliveInterval writes
// again the state of users whose last write failed, and instance_alive. When
// ctx ends it writes a final instance_clear bounded by ClearTimeout and
// closes the Publisher; it returns that write's error, or nil.
//
// A failed start, or MaxAliveFailures failed rounds in a row, end Run with
// the error, without the final clear (the instance did not shut down).
func (p *Publisher) Run(ctx context.Context) error {
	if err := p.restart(ctx); err != nil {
		if ctx.Err() != nil {
			return p.shutdown()
		}
		return err
	}
	t := time.NewTicker(p.cfg.AliveInterval)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return p.shutdown()
		case <-t.C:
		}
		err := p.alive(ctx)
		switch {
		case ctx.Err() != nil:
			return p.shutdown()
		case err == nil:
			failures = 0
			continue
		}
		failures++
		p.m.aliveFailures.Inc()
		if failures >= p.cfg.MaxAliveFailures {
			return fmt.Errorf("keeping instance %s alive: %d rounds failed: %w", p.cfg.Instance, failures, err)
		}
		p.log.WarnContext(ctx, "presence input: keeping the instance alive failed; retrying at the next round",
			"instance", p.cfg.Instance, "failures", failures, "err", err)
	}
}

// restart clears the instance and writes the syncs already counted, in one
// write so they stay together.
func (p *Publisher) restart(ctx context.Context) error {
	p.gate.Lock()
	defer p.gate.Unlock()
	if p.closed {
		return ErrClosed
	}
	recs := []schema.UserSyncRecord{{Kind: schema.KindInstanceClear}}
	p.mu.Lock()
	for id, u := range p.users {
		if u.syncs > 0 {
			t := true
			recs = append(recs, schema.UserSyncRecord{Kind: schema.KindUserSync, UserID: id, Syncing: &t})
		}
	}
	p.mu.Unlock()
	if err := p.write(ctx, recs...); err != nil {
		return fmt.Errorf("starting instance %s: %w", p.cfg.Instance, err)
	}
	p.mu.Lock()
	for id, u := range p.users {
		u.dirty = false
		p.drop(id, u)
	}
	p.mu.Unlock()
	return nil
}

// alive writes again the state of dirty users, then instance_alive. It also
// forgets activity older than ActiveInterval.
func (p *Publisher) alive(ctx context.Context) error {
	p.mu.Lock()
	var dirty []string
	for id, u := range p.users {
		if u.dirty {
			dirty = append(dirty, id)
		}
	}
	for id, at := range p.active {
		if time.Since(at) >= p.cfg.ActiveInterval {
			delete(p.active, id)
		}
	}
	p.mu.Unlock()
	var errs []error
	for _, id := range dirty {
		errs = append(errs, p.withUser(ctx, id, func(u *user) error {
			if !u.dirty {
				return nil
			}
			return p.writeSync(ctx, u, id, u.syncs > 0)
		}))
	}
	p.gate.RLock()
	defer p.gate.RUnlock()
	if p.closed {
		return ErrClosed
	}
	errs = append(errs, p.write(ctx, schema.UserSyncRecord{Kind: schema.KindInstanceAlive}))
	return errors.Join(errs...)
}

// shutdown writes the final instance_clear with a fresh context (the run's
// has ended) and closes the Publisher.
func (p *Publisher) shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ClearTimeout)
	defer cancel()
	p.gate.Lock()
	if p.closed {
		p.gate.Unlock()
		return nil
	}
	err := p.write(ctx, schema.UserSyncRecord{Kind: schema.KindInstanceClear})
	if err == nil {
		p.forget()
	}
	p.closed = true
	p.gate.Unlock()
	if err != nil {
		return fmt.Errorf("clearing instance %s on shutdown: %w", p.cfg.Instance, err)
	}
	return nil
}
