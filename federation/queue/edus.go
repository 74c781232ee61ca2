package queue

import (
	"time"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/txn"
)

// eduSlot holds one kind of a destination's pending EDUs.
type eduSlot interface {
	// take removes the EDUs for the next transaction, at most max.
	take(max int) []eduItem
	// drain removes everything the slot holds.
	drain() []eduItem
	// len is how many EDUs take could return at most.
	len() int
}

// eduItem is an EDU taken for a transaction, and what delivering it completes.
type eduItem struct {
	typ string
	// count is how many EDUs it counts as when dropped: a presence EDU
	// counts one per user state.
	count int
	edu   txn.EDU
	// render, when set, makes the EDU for a transaction built at a time
	// (presence is aged to it); edu is unused then.
	render func(built time.Time) (txn.EDU, error)
	done   func()
	// durable: the EDU is kept in the store until delivered (to-device,
	// device lists) as kind at position pos; done acknowledges it there, and
	// shedding leaves it alone.
	durable bool
	kind    Durable
	pos     int64
}

// build returns the EDU for a transaction built at built.
func (it eduItem) build(built time.Time) (txn.EDU, error) {
	if it.render != nil {
		return it.render(built)
	}
	return it.edu, nil
}

// eduQueue is the slot of the EDUs that have none of their own, in the order
// they came. A keyed EDU replaces the pending one of the same type and key,
// in its place, so a destination that was slow gets the latest state and not
// its history; the replaced one is done when the one replacing it is.
type eduQueue struct {
	items []*queuedEDU
	keyed map[eduKey]*queuedEDU
}

type eduKey struct{ typ, key string }

type queuedEDU struct {
	e    EDU
	done func()
}

func (q *eduQueue) add(e EDU, done func()) {
	if e.Key == "" {
		q.items = append(q.items, &queuedEDU{e: e, done: done})
		return
	}
	k := eduKey{e.Type, e.Key}
	if old, ok := q.keyed[k]; ok {
		old.e, old.done = e, chain(old.done, done)
		return
	}
	if q.keyed == nil {
		q.keyed = map[eduKey]*queuedEDU{}
	}
	q.keyed[k] = &queuedEDU{e: e, done: done}
	q.items = append(q.items, q.keyed[k])
}

func (q *eduQueue) take(max int) []eduItem {
	n := min(len(q.items), max)
	if n <= 0 {
		return nil
	}
	out := make([]eduItem, n)
	for i, it := range q.items[:n] {
		if it.e.Key != "" {
			delete(q.keyed, eduKey{it.e.Type, it.e.Key})
		}
		out[i] = eduItem{typ: it.e.Type, count: 1, edu: it.e.EDU, done: it.done}
	}
	q.items = q.items[n:]
	if len(q.items) == 0 {
		q.items = nil
	}
	return out
}

func (q *eduQueue) drain() []eduItem { return q.take(len(q.items)) }

func (q *eduQueue) len() int { return len(q.items) }

func chain(first, then func()) func() {
	return func() {
		if first != nil {
			first()
		}
		if then != nil {
			then()
		}
	}
}

// eduType is an EDU type as a metric label (a bounded set).
func eduType(t string) string {
	switch t {
	case edu.TypePresence, edu.TypeTyping, edu.TypeReceipt, edu.TypeDeviceListUpdate, edu.TypeDirectToDevice, edu.TypeSigningKeyUpdate:
		return t
	}
	return "other"
}
