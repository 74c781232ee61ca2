package queue

import (
	"context"
	"errors"
)

// errFenceLost is returned by transmit when the worker lost d's fence during
// or before the send: the items stay queued, and the worker takes the fence
// again before it sends them.
var errFenceLost = errors.New("destination fence lost")

// run is d's worker (idle is its slot): it holds d's fence while it catches
// up and sends, and takes it again when it loses it with work left. It
// returns an error only when a store write d cannot go on without was given
// up on (Run then fails).
func (d *destination) run(ctx context.Context, idle chan struct{}) error {
	for {
		release, ok := d.hold(ctx)
		if !ok {
			return nil // stopped, or Run ends: what is queued is not done
		}
		err := d.work(ctx)
		lost := d.lostFence(ctx, idle)
		release()
		if err != nil || !lost {
			return err
		}
		d.m.fenceLost.Inc()
		d.log.Warn("lost the destination's fence while sending; its send was cancelled, taking the fence again", "destination", d.name)
	}
}

// hold takes d's fence, waiting while another member holds it (or the
// fence's store fails), and sets the worker's send context: it ends when ctx
// does or the fence is lost. ok is false when d stopped or ctx ended first.
func (d *destination) hold(ctx context.Context) (release func(), ok bool) {
	f := d.cfg.Fence
	if f == nil {
		d.setSendContext(ctx)
		return func() {}, true
	}
	waited := false
	for {
		held, err := f.Acquire(ctx, d.name)
		if held != nil {
			sctx, cancel := context.WithCancel(ctx)
			stop := context.AfterFunc(held, cancel)
			d.setSendContext(sctx)
			if waited {
				d.log.Info("took the destination's fence", "destination", d.name)
			}
			return func() { stop(); cancel(); f.Release(d.name) }, true
		}
		if ctx.Err() != nil {
			return nil, false
		}
		if !waited {
			waited = true
			d.m.fenceWaits.Inc()
			if err != nil {
				d.log.Warn("cannot take the destination's fence; not sending until it can", "destination", d.name, "err", err)
			} else {
				d.log.Info("another member holds the destination's fence (it is still sending); waiting", "destination", d.name)
			}
		}
		if d.pause(ctx, d.cfg.FenceRetryDelay) != nil {
			return nil, false
		}
	}
}

// setSendContext sets the context the worker's sends run in.
func (d *destination) setSendContext(sctx context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.w.send = sctx
}

// sendContext is the context a send runs in: ctx, ended also when the
// worker's fence is lost.
func (d *destination) sendContext(ctx context.Context) context.Context {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.w.send == nil {
		return ctx
	}
	return d.w.send
}

// lostFence reports whether the worker whose slot is idle still runs but
// lost its fence (neither ctx ended nor d stopped).
func (d *destination) lostFence(ctx context.Context, idle chan struct{}) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.w.idle == idle && d.w.send != nil && d.w.send.Err() != nil && ctx.Err() == nil && !d.stopping
}
