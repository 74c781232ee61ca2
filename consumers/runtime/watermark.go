package runtime

import (
	"sort"
	"sync"
)

// watermark tracks fetched offsets of one partition and which are done. Its
// value is the highest offset below which every fetched record is done: the
// offset to commit. Records may be done out of order.
type watermark struct {
	mu      sync.Mutex
	offsets []int64 // fetched, not yet below the watermark, ascending
	done    []bool
	next    int64 // the watermark when nothing is pending
}

func newWatermark(start int64) *watermark { return &watermark{next: start} }

// add records a fetched offset; offsets arrive in ascending order.
func (w *watermark) add(offset int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.next < 0 && len(w.offsets) == 0 {
		w.next = offset // the partition's start was not known before the first fetch
	}
	w.offsets = append(w.offsets, offset)
	w.done = append(w.done, false)
}

// markDone records offset as handled.
func (w *watermark) markDone(offset int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	i := sort.Search(len(w.offsets), func(i int) bool { return w.offsets[i] >= offset })
	if i < len(w.offsets) && w.offsets[i] == offset {
		w.done[i] = true
	}
	j := 0
	for j < len(w.done) && w.done[j] {
		w.next = w.offsets[j] + 1
		j++
	}
	if j > 0 {
		w.offsets = append(w.offsets[:0], w.offsets[j:]...)
		w.done = append(w.done[:0], w.done[j:]...)
	}
}

// value returns the offset to commit and how many records are in flight.
func (w *watermark) value() (commit int64, inFlight int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.next, len(w.offsets)
}
