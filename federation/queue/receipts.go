package queue

import (
	"context"
	"time"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/txn"
)

// maxReceiptEDUs is how many m.receipt EDUs one transaction carries at most.
const maxReceiptEDUs = 5

// Receipt is a local user's m.read receipt for a destination.
type Receipt struct {
	RoomID, UserID string
	EventIDs       []string
	ThreadID       string
	TS             int64
}

type receiptKey struct{ room, user, thread string }

// receiptSlot is the EDU slot of read receipts: the latest unsent receipt per
// (room, user, thread), in the order first queued; a receipt replaced by a
// later one is released at once, as presence states are (see presence.go).
// A transaction takes them as at most maxReceiptEDUs m.receipt EDUs: one EDU
// holds one receipt per (room, user), so threaded receipts of one user in one
// room go in separate EDUs.
type receiptSlot struct {
	pending map[receiptKey]pendingReceipt
	order   []receiptKey
}

type pendingReceipt struct {
	r    Receipt
	item *mergedItem
}

// add merges rs into the slot and returns the items of the receipts they
// replaced, to be released once the destination's lock is given up.
func (s *receiptSlot) add(rs []Receipt, item *mergedItem) (superseded []*mergedItem) {
	if s.pending == nil {
		s.pending = map[receiptKey]pendingReceipt{}
	}
	for _, r := range rs {
		k := receiptKey{r.RoomID, r.UserID, r.ThreadID}
		if old, ok := s.pending[k]; ok {
			superseded = append(superseded, old.item)
		} else {
			s.order = append(s.order, k)
		}
		s.pending[k] = pendingReceipt{r: r, item: item}
	}
	return superseded
}

// take packs pending receipts, oldest first, into at most max (and
// maxReceiptEDUs) EDUs.
func (s *receiptSlot) take(max int) []eduItem {
	var out []eduItem
	for len(s.order) > 0 && len(out) < min(max, maxReceiptEDUs) {
		content := edu.Receipt{}
		var items []*mergedItem
		var rest []receiptKey
		for _, k := range s.order {
			p := s.pending[k]
			room := content[k.room]
			if _, taken := room.Read[k.user]; taken {
				rest = append(rest, k) // another thread of the user: the next EDU
				continue
			}
			if room.Read == nil {
				room.Read = map[string]edu.UserReceipt{}
			}
			room.Read[k.user] = edu.UserReceipt{EventIDs: p.r.EventIDs, Data: edu.ReceiptData{TS: p.r.TS, ThreadID: p.r.ThreadID}}
			content[k.room] = room
			items = append(items, p.item)
			delete(s.pending, k)
		}
		s.order = rest
		e, err := content.EDU()
		out = append(out, eduItem{typ: edu.TypeReceipt, count: len(items), done: func() { releaseAll(items) },
			render: func(_ time.Time) (txn.EDU, error) { return e, err }})
	}
	if len(s.order) == 0 {
		s.order = nil
	}
	return out
}

// drain takes every pending receipt, as one item counting one per receipt.
func (s *receiptSlot) drain() []eduItem {
	if len(s.order) == 0 {
		return nil
	}
	items := make([]*mergedItem, 0, len(s.pending))
	for _, p := range s.pending {
		items = append(items, p.item)
	}
	s.pending, s.order = nil, nil
	return []eduItem{{typ: edu.TypeReceipt, count: len(items), done: func() { releaseAll(items) }}}
}

func (s *receiptSlot) len() int { return min(len(s.order), maxReceiptEDUs) }

// enqueueReceipts merges rs into d's receipts as enqueuePresence merges
// presence: dropped and counted while d is failing or catching up.
func (d *destination) enqueueReceipts(ctx context.Context, rs []Receipt, done func()) error {
	item := newMergedItem(len(rs), done)
	return d.enqueueMerged(ctx, edu.TypeReceipt, len(rs), done, func() []*mergedItem {
		return d.pending.receipts.add(rs, item)
	})
}
