package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/fedpipe/fedpipe/federation/txn"
)

// Durable is a kind of EDU the store keeps for a destination until the
// destination accepts it: to-device messages and device-list updates. They
// are never dropped, whatever the destination does.
type Durable int

const (
	// ToDevice: m.direct_to_device EDUs, sent in position order.
	ToDevice Durable = iota
	// DeviceLists: m.device_list_update and m.signing_key_update EDUs, the
	// latest per (user, device) and per user, with their prev_id chain.
	DeviceLists
)

func (k Durable) String() string {
	if k == ToDevice {
		return "to_device"
	}
	return "device_lists"
}

// StoredEDU is an EDU the store keeps for a destination.
type StoredEDU struct {
	// Position orders a destination's EDUs of a kind and names one in the store.
	Position int64
	// EDU is sent byte for byte (the store builds it: a device-list update
	// gets its stream_id and prev_id there).
	EDU txn.EDU
}

// deviceListReserve is how many EDUs of a transaction to-device messages
// leave to the slots after them (device-list updates), as Synapse does, so
// that those always trickle out.
const deviceListReserve = 10

// durableSlot is a destination's EDUs of one Durable kind. They are kept in
// the store until the destination accepts them, so the slot holds only a page
// read from the store, in position order, and nothing of it is ever dropped:
// when the destination backs off or overflows, drain forgets the page, and
// the store is read again from the oldest unacknowledged EDU when it sends
// again.
type durableSlot struct {
	kind Durable
	// reserve is how many of the EDUs left in a transaction take leaves to
	// the slots after it.
	reserve int
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

func (s *durableSlot) take(max int) []eduItem {
	n := min(len(s.items), max-s.reserve)
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
func (s *durableSlot) drain() []eduItem {
	*s = durableSlot{kind: s.kind, reserve: s.reserve, unread: true, epoch: s.epoch + 1}
	return nil
}

// len counts one for a read that may find EDUs, so the worker reads.
func (s *durableSlot) len() int {
	if len(s.items) == 0 && s.unread {
		return 1
	}
	return len(s.items)
}

// durables are d's durable slots. d.mu is held.
func (d *destination) durables() []*durableSlot {
	return []*durableSlot{&d.pending.toDevice, &d.pending.deviceLists}
}

// notifyStored tells d that EDUs of kind were stored for it, and starts its
// worker unless it is backing off (the catch-up pacer wakes it when it is
// due, from the store) or a worker runs (it reads them next).
func (d *destination) notifyStored(ctx context.Context, kind Durable) error {
	if err := d.refresh(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	d.durables()[kind].unread = true
	if d.retry.Failing(d.cfg.Now()) {
		d.mu.Unlock()
		return nil
	}
	idle := d.wake(false)
	d.mu.Unlock()
	return d.launch(idle)
}

// readDurables fills d's durable slots that are empty and whose store may
// hold more. The reads run outside d.mu.
func (d *destination) readDurables(ctx context.Context) error {
	for kind := range d.durables() {
		if err := d.readDurable(ctx, Durable(kind)); err != nil {
			return err
		}
	}
	return nil
}

func (d *destination) readDurable(ctx context.Context, kind Durable) error {
	d.mu.Lock()
	s := d.durables()[kind]
	if !s.unread || len(s.items) > 0 {
		d.mu.Unlock()
		return nil
	}
	s.unread = false
	after, epoch, limit := s.after, s.epoch, txn.MaxEDUs-s.reserve
	d.mu.Unlock()
	rows, err := d.store.StoredEDUs(ctx, d.name, kind, after, limit, d.cfg.MaxTransactionBytes)
	d.mu.Lock()
	defer d.mu.Unlock()
	s = d.durables()[kind]
	if err != nil {
		s.unread = true
		return fmt.Errorf("reading stored %s EDUs of %s: %w", kind, d.name, err)
	}
	if s.epoch != epoch || d.stopping {
		return nil // drained meanwhile: read again from the oldest
	}
	for _, r := range rows {
		pos := r.Position
		s.items = append(s.items, eduItem{typ: r.EDU.Type, count: 1, durable: true, kind: kind, pos: pos, edu: r.EDU,
			done: func() { d.acked(kind, pos) }})
		s.after = pos
	}
	s.unread = s.unread || len(rows) > 0
	return nil
}

// acked notes that the stored EDU of kind at pos was delivered (or refused
// as malformed): flushAcks deletes it from the store.
func (d *destination) acked(kind Durable, pos int64) {
	d.mu.Lock()
	d.acks[kind] = append(d.acks[kind], pos)
	d.mu.Unlock()
}

// flushAcks deletes the acknowledged stored EDUs from the store. It runs
// even when ctx has ended (the member is stopping): the destination accepted
// them, and the next owner, which cannot send before this worker releases
// the destination's fence, must not send them again (a device-list update
// sent again would restart its chain). A failure leaves them there, to be
// sent again after the destination's next backoff or restart: a to-device
// message the receiver drops by its message_id, a device-list update it
// already has.
func (d *destination) flushAcks(ctx context.Context) {
	d.mu.Lock()
	acks := d.acks
	d.acks = [2][]int64{}
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for kind, positions := range acks {
		if len(positions) == 0 {
			continue
		}
		if err := d.store.AckEDUs(ctx, d.name, Durable(kind), positions); err != nil {
			d.m.storeErrors.Inc()
			d.log.Warn("deleting delivered stored EDUs", "destination", d.name, "kind", Durable(kind).String(), "count", len(positions), "err", err)
			continue
		}
		d.m.durableAcked.WithLabelValues(Durable(kind).String()).Add(float64(len(positions)))
	}
}

// markSending tells the store that the device-list updates of in are in a
// transaction about to be sent (sending), or in one the destination did not
// accept (!sending). A mark left by a sender that died mid-send says the
// destination may have accepted the update: the next update of its user
// names it as prev_id, so a kill between the destination's answer and
// flushAcks does not restart the user's chain (prev_id []). Marking is best
// effort: when it fails, the update is sent all the same.
func (d *destination) markSending(ctx context.Context, in batch, sending bool) {
	var positions []int64
	for _, it := range in.edus {
		if it.durable && it.kind == DeviceLists {
			positions = append(positions, it.pos)
		}
	}
	if len(positions) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := d.store.MarkSending(ctx, d.name, DeviceLists, positions, sending); err != nil {
		d.m.storeErrors.Inc()
		d.log.Warn("marking device-list updates as being sent; sending them all the same", "destination", d.name, "count", len(positions), "sending", sending, "err", err)
	}
}

// withoutDurable is b without its stored EDUs, which shedding leaves in the
// store.
func (b batch) withoutDurable() batch {
	out := batch{pdus: b.pdus}
	for _, it := range b.edus {
		if !it.durable {
			out.edus = append(out.edus, it)
		}
	}
	return out
}
