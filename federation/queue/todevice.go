package queue

import (
	"context"
	"fmt"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/txn"
)

// deviceListReserve is how many EDUs of a transaction to-device messages
// leave to the slots after them (device-list updates), as Synapse does, so
// that those always trickle out.
const deviceListReserve = 10

// toDeviceSlot is a destination's to-device EDUs. They are durable in the
// store until the destination accepts them, so the slot holds only a page
// read from the store, in position order, and nothing of it is ever dropped:
// when the destination backs off or overflows, drain forgets the page, and
// the store is read again from the oldest unacknowledged EDU when it sends
// again.
type toDeviceSlot struct {
	// unread: the store may hold EDUs after `after` (some were stored since
	// the last read, the destination is new here, or the last page was not
	// empty).
	unread bool
	// after is the highest position read into the slot.
	after int64
	// epoch counts drains, so that a page read across one is not kept.
	epoch uint64
	items []eduItem
}

func (s *toDeviceSlot) take(max int) []eduItem {
	n := min(len(s.items), max-deviceListReserve)
	if n <= 0 {
		return nil
	}
	out := s.items[:n:n]
	s.items = s.items[n:]
	if len(s.items) == 0 {
		s.items = nil
	}
	return out
}

// drain forgets the page (the store keeps it): nothing to shed.
func (s *toDeviceSlot) drain() []eduItem {
	*s = toDeviceSlot{unread: true, epoch: s.epoch + 1}
	return nil
}

// len counts one for a read that may find EDUs, so the worker reads.
func (s *toDeviceSlot) len() int {
	if len(s.items) == 0 && s.unread {
		return 1
	}
	return len(s.items)
}

// notifyToDevice tells d that to-device EDUs were stored for it, and starts
// its worker unless it is backing off (the catch-up pacer wakes it when it is
// due, from the store) or a worker runs (it reads them next).
func (d *destination) notifyToDevice(ctx context.Context) error {
	if err := d.refresh(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	d.pending.toDevice.unread = true
	if d.retry.Failing(d.cfg.Now()) {
		d.mu.Unlock()
		return nil
	}
	idle := d.wake(false)
	d.mu.Unlock()
	return d.launch(idle)
}

// readToDevice fills d's to-device slot from the store when it is empty and
// the store may hold more. The read runs outside d.mu.
func (d *destination) readToDevice(ctx context.Context) error {
	d.mu.Lock()
	s := &d.pending.toDevice
	if !s.unread || len(s.items) > 0 {
		d.mu.Unlock()
		return nil
	}
	s.unread = false
	after, epoch := s.after, s.epoch
	d.mu.Unlock()
	rows, err := d.store.ToDevice(ctx, d.name, after, txn.MaxEDUs-deviceListReserve, d.cfg.MaxTransactionBytes)
	d.mu.Lock()
	defer d.mu.Unlock()
	s = &d.pending.toDevice
	if err != nil {
		s.unread = true
		return fmt.Errorf("reading to-device messages of %s: %w", d.name, err)
	}
	if s.epoch != epoch || d.stopping {
		return nil // drained meanwhile: read again from the oldest
	}
	for _, r := range rows {
		pos := r.Position
		s.items = append(s.items, eduItem{typ: edu.TypeDirectToDevice, count: 1, durable: true,
			edu: txn.EDU{Type: edu.TypeDirectToDevice, Content: r.Content}, done: func() { d.acked(pos) }})
		s.after = pos
	}
	s.unread = s.unread || len(rows) > 0
	return nil
}

// acked notes that the to-device EDU at pos was delivered (or refused as
// malformed): flushAcks deletes it from the store.
func (d *destination) acked(pos int64) {
	d.mu.Lock()
	d.acks = append(d.acks, pos)
	d.mu.Unlock()
}

// flushAcks deletes the acknowledged to-device EDUs from the store. A
// failure leaves them there, to be sent again after the destination's next
// backoff or restart: a duplicate the receiver drops by its message_id.
func (d *destination) flushAcks(ctx context.Context) {
	d.mu.Lock()
	acks := d.acks
	d.acks = nil
	d.mu.Unlock()
	if len(acks) == 0 {
		return
	}
	if err := d.store.AckToDevice(ctx, d.name, acks); err != nil {
		if ctx.Err() == nil {
			d.m.storeErrors.Inc()
			d.log.Warn("deleting delivered to-device messages", "destination", d.name, "count", len(acks), "err", err)
		}
		return
	}
	d.m.toDeviceAcked.Add(float64(len(acks)))
}

// withoutDurable is b without its to-device EDUs, which shedding leaves in
// the store.
func (b batch) withoutDurable() batch {
	out := batch{pdus: b.pdus}
	for _, it := range b.edus {
		if !it.durable {
			out.edus = append(out.edus, it)
		}
	}
	return out
}
