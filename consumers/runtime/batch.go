package runtime

import (
	"context"

	"github.com/segmentio/kafka-go"
)

// Batch lets a PartitionHandler handle records that arrive together as one
// batch (one transaction, one query) while keeping the runtime's one-record
// contract. A record is kept while it is not the last one the partition held
// when it was fetched (its high-water mark) and fewer than Max are kept; then
// Flush gets every kept item, in offset order, and their done callbacks run
// when Flush calls done (at once, or later from another goroutine, as when the
// batch's output is acknowledged). The handler calls Add from Handle; for a record it will
// reject as poison it calls Flush first, so the kept records do not wait for
// a next record.
//
// When Flush fails, the items stay kept and Add returns the error: the runtime
// hands the same record again, which Add recognises by its offset and answers
// by flushing again. When Flush fails for poison (IsPoison: a record's data
// refused by PostgreSQL, say) and several items are kept, they are flushed
// again one at a time, in order, so that only the records that fail alone are
// dead-lettered (through the partition the runtime runs, counted as poison)
// and the others handled. Close abandons kept items: not done, their offsets
// are not committed, and the partition's next owner handles them again.
type Batch[T any] struct {
	// Max is the most items kept (1 when zero: no batching).
	Max int
	// Flush handles a batch in order. On success it calls done once, now or
	// when the batch is fully handled; on failure it must not call it.
	Flush func(ctx context.Context, items []T, done func()) error

	items   []T
	dones   []func()
	msgs    []kafka.Message
	lastOff int64
}

// Add keeps m's item, and flushes when m was the last record known or the
// batch is full (see Batch).
func (b *Batch[T]) Add(ctx context.Context, m kafka.Message, item T, done func()) error {
	if len(b.items) > 0 && m.Offset <= b.lastOff {
		return b.FlushKept(ctx) // the record whose flush failed, handed again
	}
	b.items, b.dones, b.msgs, b.lastOff = append(b.items, item), append(b.dones, done), append(b.msgs, m), m.Offset
	if m.Offset+1 < m.HighWaterMark && len(b.items) < max(b.Max, 1) {
		return nil
	}
	return b.FlushKept(ctx)
}

// FlushKept handles the kept items now, if there are any.
func (b *Batch[T]) FlushKept(ctx context.Context) error {
	if len(b.items) == 0 {
		return nil
	}
	dones := b.dones
	err := b.Flush(ctx, b.items, func() {
		for _, d := range dones {
			d()
		}
	})
	if err == nil {
		b.items, b.dones, b.msgs = nil, nil, nil // dones may still run later: never reused
		return nil
	}
	deadLetter := deadLetterFrom(ctx)
	if !IsPoison(err) || deadLetter == nil {
		return err
	}
	for len(b.items) > 0 {
		if len(dones) > 1 { // alone, the one item has just failed
			err = b.Flush(ctx, b.items[:1], b.dones[0])
		}
		if err != nil {
			if !IsPoison(err) {
				return err
			}
			if derr := deadLetter(ctx, b.msgs[0], err); derr != nil {
				return derr
			}
			b.dones[0]()
		}
		b.items, b.dones, b.msgs = b.items[1:], b.dones[1:], b.msgs[1:]
	}
	b.items, b.dones, b.msgs = nil, nil, nil
	return nil
}

// Len is how many items are kept.
func (b *Batch[T]) Len() int { return len(b.items) }

// Close abandons the kept items (see Batch).
func (b *Batch[T]) Close() {
	b.items, b.dones, b.msgs = nil, nil, nil
}
