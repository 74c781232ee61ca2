package queue

import (
	"sync/atomic"
	"time"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/presence"
	"github.com/fedpipe/fedpipe/federation/txn"
)

// maxPresenceUsers is how many users' presence one m.presence EDU carries, as
// Synapse batches them.
const maxPresenceUsers = 50

// A destination's presence is held as the latest state per user, not as a
// list of updates: a user who changes presence 10,000 times while the
// destination is slow costs one entry, and the destination gets one update
// with the last state. The states are turned into the m.presence EDU when a
// transaction is built, so last_active_ago is measured then.
//
// A state replaced by a later state of the same user is dropped, and its item
// is done at once when it has no other state pending: the item holding the
// later state comes after it on the destination's partition and is not done
// yet, so committing past the earlier record loses nothing. Waiting for the
// later state's delivery instead would hold every superseded record undone,
// and a burst of updates would fill the partition's in-flight window.

// mergedItem counts the states (or receipts) of one enqueued item that are
// still pending or in flight; its done is called when the last is delivered,
// superseded or dropped.
type mergedItem struct {
	left atomic.Int64
	done func()
}

func newMergedItem(states int, done func()) *mergedItem {
	p := &mergedItem{done: done}
	p.left.Store(int64(states))
	return p
}

func (p *mergedItem) release() {
	if p.left.Add(-1) == 0 && p.done != nil {
		p.done()
	}
}

func releaseAll(items []*mergedItem) {
	for _, p := range items {
		p.release()
	}
}

// pendingPresence is a user's latest state not yet taken into a transaction.
type pendingPresence struct {
	state presence.State
	item  *mergedItem
}

// presenceSlot is the EDU slot of presence: the latest unsent state per user,
// users in the order they were first queued.
type presenceSlot struct {
	states map[string]pendingPresence
	users  []string
}

// add merges states into the slot and returns the items whose states they
// superseded (one entry per state), to be released once the destination's
// lock is given up.
func (s *presenceSlot) add(states []presence.State, item *mergedItem) (superseded []*mergedItem) {
	if s.states == nil {
		s.states = map[string]pendingPresence{}
	}
	for _, st := range states {
		if old, ok := s.states[st.UserID]; ok {
			superseded = append(superseded, old.item)
		} else {
			s.users = append(s.users, st.UserID) // keeps its place when replaced
		}
		s.states[st.UserID] = pendingPresence{state: st, item: item}
	}
	return superseded
}

// take takes the states of up to 50 users, longest pending first, as one
// m.presence EDU (when max leaves room for one).
func (s *presenceSlot) take(max int) []eduItem {
	n := min(len(s.users), maxPresenceUsers)
	if n == 0 || max < 1 {
		return nil
	}
	states := make([]presence.State, 0, n)
	items := make([]*mergedItem, 0, n)
	for _, u := range s.users[:n] {
		p := s.states[u]
		delete(s.states, u)
		states = append(states, p.state)
		items = append(items, p.item)
	}
	s.users = s.users[n:]
	if len(s.users) == 0 {
		s.users = nil // lets the grown array go
	}
	return []eduItem{{typ: edu.TypePresence, count: n, done: func() { releaseAll(items) },
		render: func(built time.Time) (txn.EDU, error) { return renderPresence(states, built) }}}
}

// drain takes every pending state, as one item counting one per state.
func (s *presenceSlot) drain() []eduItem {
	if len(s.users) == 0 {
		return nil
	}
	items := make([]*mergedItem, 0, len(s.states))
	for _, p := range s.states {
		items = append(items, p.item)
	}
	s.states, s.users = nil, nil
	return []eduItem{{typ: edu.TypePresence, count: len(items), done: func() { releaseAll(items) }}}
}

func (s *presenceSlot) len() int { return min(len(s.users), 1) }

// renderPresence returns the m.presence EDU of states for a transaction built
// at now: each state aged to now.
func renderPresence(states []presence.State, now time.Time) (txn.EDU, error) {
	push := make([]edu.PresenceUpdate, len(states))
	for i, s := range states {
		push[i] = edu.PresenceUpdateAt(s, now)
	}
	return edu.Presence{Push: push}.EDU()
}
