package queue

import (
	"time"

	"github.com/fedpipe/fedpipe/federation/txn"
)

// queuedPDU is a PDU waiting for a transaction, and what delivering it completes.
type queuedPDU struct {
	PDU
	done func()
	at   time.Time // when it was queued
}

// pending is what a destination holds to send live: PDUs in order, and EDUs
// in slots, one per kind that is held in its own way.
type pending struct {
	// retry is a batch taken whose send was cut because the worker lost its
	// fence: it goes first, once the fence is held again.
	retry    batch
	pdus     []queuedPDU
	presence presenceSlot
	receipts receiptSlot
	// toDevice and deviceLists are kept in the store (durable.go).
	toDevice, deviceLists durableSlot
	edus                  eduQueue
}

// slots are the EDU slots in the order a transaction takes from them.
// Synapse's order is presence, receipts, to-device, device lists, then the
// other EDUs and the keyed ones: a new kind of EDU is a new slot in its place
// here, and the send loop does not change.
func (p *pending) slots() []eduSlot {
	return []eduSlot{&p.presence, &p.receipts, &p.toDevice, &p.deviceLists, &p.edus}
}

// newPending is an empty pending whose durable slots read the store first:
// a previous owner, or this process before a restart, may have left EDUs
// there.
func newPending() pending {
	return pending{toDevice: durableSlot{kind: ToDevice, reserve: deviceListReserve, unread: true},
		deviceLists: durableSlot{kind: DeviceLists, unread: true}}
}

func (p *pending) empty() bool {
	if len(p.pdus) > 0 || !p.retry.empty() {
		return false
	}
	for _, s := range p.slots() {
		if s.len() > 0 {
			return false
		}
	}
	return true
}

// batch is what one transaction (or, when it is full, the next ones) sends,
// in order.
type batch struct {
	pdus []queuedPDU
	edus []eduItem
}

func (b batch) empty() bool { return len(b.pdus) == 0 && len(b.edus) == 0 }

// then is b followed by next.
func (b batch) then(next batch) batch {
	return batch{pdus: append(b.pdus[:len(b.pdus):len(b.pdus)], next.pdus...), edus: append(b.edus[:len(b.edus):len(b.edus)], next.edus...)}
}

// take takes a transaction's worth: up to txn.MaxPDUs PDUs and txn.MaxEDUs
// EDUs, the EDUs slot by slot in order.
func (p *pending) take() batch {
	if !p.retry.empty() {
		b := p.retry
		p.retry = batch{}
		return b
	}
	n := min(len(p.pdus), txn.MaxPDUs)
	b := batch{pdus: append([]queuedPDU(nil), p.pdus[:n]...)}
	p.pdus = p.pdus[n:]
	if len(p.pdus) == 0 {
		p.pdus = nil // lets the grown array go
	}
	for _, s := range p.slots() {
		b.edus = append(b.edus, s.take(txn.MaxEDUs-len(b.edus))...)
	}
	return b
}

// drain takes everything (the destination backs off).
func (p *pending) drain() batch {
	b := batch{pdus: p.pdus}
	p.pdus = nil
	for _, s := range p.slots() {
		b.edus = append(b.edus, s.drain()...)
	}
	b = p.retry.then(b)
	p.retry = batch{}
	return b
}

// over reports whether p holds more than max PDUs and EDUs, or a PDU queued
// longer than maxAge ago.
func (p *pending) over(max int, maxAge time.Duration, now time.Time) bool {
	n := len(p.pdus) + len(p.retry.pdus) + len(p.retry.edus)
	for _, s := range p.slots() {
		n += s.len()
	}
	if n > max {
		return true
	}
	oldest := p.pdus
	if len(p.retry.pdus) > 0 {
		oldest = p.retry.pdus
	}
	return len(oldest) > 0 && now.Sub(oldest[0].at) > maxAge
}
