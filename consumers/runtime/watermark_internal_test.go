package runtime

import (
	"testing"
	"time"
)

// The watermark bounds what a partition fetches: MaxInFlight records not
// done, or maxTrackedPerInFlight times as many above the watermark; a record
// done signals the waiting fetch loop instead of it polling.
func TestWatermarkBoundsAndSignalsSpace(t *testing.T) {
	signalled := func(w *watermark) bool {
		select {
		case <-w.freed():
			return true
		case <-time.After(10 * time.Millisecond):
			return false
		}
	}
	t.Run("in flight", func(t *testing.T) {
		w := newWatermark(-1, 2)
		w.add(10)
		w.add(11)
		if !w.full() || signalled(w) {
			t.Fatalf("two in flight of two: full %v, want full and no signal", w.full())
		}
		w.markDone(11) // done after one that is not: room, the commit held
		if !signalled(w) || w.full() || w.value() != 10 {
			t.Fatalf("after 11 done: full %v, commit %d; want a signal, room and commit 10", w.full(), w.value())
		}
		w.markDone(11) // again: nothing changes, no signal
		if signalled(w) {
			t.Fatal("a record done twice signalled twice")
		}
		w.markDone(10)
		if !signalled(w) || w.value() != 12 {
			t.Fatalf("after 10 done: commit %d, want a signal and 12", w.value())
		}
	})
	t.Run("tracked above the watermark", func(t *testing.T) {
		w := newWatermark(0, 1)
		w.add(0) // held
		for o := int64(1); o < maxTrackedPerInFlight; o++ {
			w.add(o)
			w.markDone(o)
		}
		if !w.full() {
			t.Fatalf("%d tracked above a held record, want full", maxTrackedPerInFlight)
		}
		signalled(w) // the signal of the records done so far
		w.markDone(0)
		if !signalled(w) || w.full() || w.value() != maxTrackedPerInFlight {
			t.Fatalf("held record done: full %v, commit %d; want a signal, room, commit %d", w.full(), w.value(), maxTrackedPerInFlight)
		}
	})
}
