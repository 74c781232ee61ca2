package runtime

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/segmentio/kafka-go"
)

func TestBatchKeepsUntilTheLastKnownRecordAndRetriesByOffset(t *testing.T) {
	var flushed [][]int
	fail := false
	var later func()
	b := Batch[int]{Max: 3, Flush: func(_ context.Context, items []int, done func()) error {
		if fail {
			return errors.New("database down")
		}
		flushed = append(flushed, slices.Clone(items))
		later = done
		return nil
	}}
	ctx := context.Background()
	done := map[int64]bool{}
	add := func(off, hwm int64) error {
		return b.Add(ctx, kafka.Message{Offset: off, HighWaterMark: hwm}, int(off), func() { done[off] = true })
	}
	// More records known: kept.
	for off := int64(0); off < 2; off++ {
		if err := add(off, 10); err != nil || len(flushed) != 0 {
			t.Fatalf("offset %d: %v, flushed %v", off, err, flushed)
		}
	}
	// Max reached: flushed; done runs when Flush says so.
	if err := add(2, 10); err != nil || !slices.Equal(flushed[0], []int{0, 1, 2}) {
		t.Fatalf("full batch: %v %v", err, flushed)
	}
	if len(done) != 0 {
		t.Fatal("done before the batch was handled")
	}
	later()
	if len(done) != 3 {
		t.Fatalf("done %v", done)
	}
	// The last known record flushes at once; a failure keeps the items, and
	// the record handed again flushes them without being kept twice.
	fail = true
	if err := add(3, 10); err != nil {
		t.Fatal(err)
	}
	if err := add(4, 5); err == nil {
		t.Fatal("flush failure not returned")
	}
	fail = false
	if err := add(4, 5); err != nil || !slices.Equal(flushed[1], []int{3, 4}) {
		t.Fatalf("retry: %v %v", err, flushed)
	}
	later()
	if !done[3] || !done[4] {
		t.Fatalf("done %v", done)
	}
	// Close abandons kept items.
	_ = add(5, 10)
	b.Close()
	if b.Len() != 0 || done[5] {
		t.Fatal("Close kept or completed an item")
	}
	// FlushKept with nothing kept does nothing.
	if err := b.FlushKept(ctx); err != nil || len(flushed) != 2 {
		t.Fatal(err)
	}
}
