package queue

import (
	"sync/atomic"
	"time"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/txn"
)

// maxPresenceUsers is how many users' presence one m.presence EDU carries, as
// Synapse batches them.
const maxPresenceUsers = 50

// A destination's presence is held as the latest state per user, not as a
// list of updates: a user who changes presence 10,000 times while the
// destination is slow costs one entry, and the destination gets one update
// with the last state. The states are turned into the m.presence EDU when a
// transaction is built (render), so last_active_ago is measured then.
//
// A state replaced by a later state of the same user is dropped, and its item
// is done at once when it has no other state pending: the item holding the
// later state comes after it on the destination's partition and is not done
// yet, so committing past the earlier record loses nothing. Waiting for the
// later state's delivery instead would hold every superseded record undone,
// and a burst of updates would fill the partition's in-flight window.

// presenceItem counts the states of one enqueued presence item that are
// still pending or in flight; its Done is called when the last is delivered,
// superseded or dropped.
type presenceItem struct {
	left atomic.Int64
	done func()
}

func (p *presenceItem) release() {
	if p.left.Add(-1) == 0 && p.done != nil {
		p.done()
	}
}

func releaseAll(items []*presenceItem) {
	for _, p := range items {
		p.release()
	}
}

// pendingPresence is a user's latest state not yet taken into a transaction.
type pendingPresence struct {
	state edu.PresenceState
	item  *presenceItem
}

// addPresence merges states into q's pending presence and returns the items
// whose states they superseded (one entry per state), to be released once
// q.mu is given up. q.mu is held.
func (q *destQueue) addPresence(states []edu.PresenceState, item *presenceItem) (superseded []*presenceItem) {
	if q.presence == nil {
		q.presence = map[string]pendingPresence{}
	}
	for _, s := range states {
		if old, ok := q.presence[s.UserID]; ok {
			superseded = append(superseded, old.item)
		} else {
			q.presenceUsers = append(q.presenceUsers, s.UserID) // keeps its place when replaced
		}
		q.presence[s.UserID] = pendingPresence{state: s, item: item}
	}
	return superseded
}

// forgetPresence removes the pending states of item (its Enqueue failed:
// the caller offers it again). q.mu is held.
func (q *destQueue) forgetPresence(item *presenceItem) {
	users := q.presenceUsers[:0]
	for _, u := range q.presenceUsers {
		if q.presence[u].item == item {
			delete(q.presence, u)
			continue
		}
		users = append(users, u)
	}
	q.presenceUsers = users
}

// takePresence takes the states of up to max users, longest pending first,
// as one item for the next transaction. q.mu is held.
func (q *destQueue) takePresence(max int) (Item, bool) {
	n := min(len(q.presenceUsers), max)
	if n == 0 {
		return Item{}, false
	}
	states := make([]edu.PresenceState, 0, n)
	items := make([]*presenceItem, 0, n)
	for _, u := range q.presenceUsers[:n] {
		p := q.presence[u]
		delete(q.presence, u)
		states = append(states, p.state)
		items = append(items, p.item)
	}
	q.presenceUsers = q.presenceUsers[n:]
	if len(q.presenceUsers) == 0 {
		q.presenceUsers = nil // lets the grown array go
	}
	return Item{Presence: states, Done: func() { releaseAll(items) }}, true
}

// dropPresence empties q's pending presence and returns its items (one entry
// per state) and the number of states. q.mu is held.
func (q *destQueue) dropPresence() []*presenceItem {
	items := make([]*presenceItem, 0, len(q.presence))
	for _, p := range q.presence {
		items = append(items, p.item)
	}
	q.presence, q.presenceUsers = nil, nil
	return items
}

// render returns the EDU of it for a transaction built at now: a presence
// item's states become one m.presence EDU aged to now.
func render(it Item, now time.Time) (txn.EDU, error) {
	if !it.isPresence() {
		return it.EDU, nil
	}
	push := make([]edu.PresenceUpdate, len(it.Presence))
	for i, s := range it.Presence {
		push[i] = s.Update(now)
	}
	return edu.Presence{Push: push}.EDU()
}

// eduType is it's EDU type as a metric label (a bounded set).
func eduType(it Item) string {
	t := it.EDU.Type
	if it.isPresence() {
		t = edu.TypePresence
	}
	switch t {
	case edu.TypePresence, edu.TypeTyping, edu.TypeReceipt, edu.TypeDeviceListUpdate, edu.TypeDirectToDevice:
		return t
	}
	return "other"
}

// eduCount is how many EDUs it counts as in the dropped metric: a presence
// item counts one per user state.
func eduCount(it Item) int {
	if it.isPresence() {
		return len(it.Presence)
	}
	return 1
}
