package runtime

import (
	"sort"
	"sync"
)

// watermark tracks fetched offsets of one partition and which are done. Its
// value is the highest offset below which every fetched record is done: the
// offset to commit. Records may be done out of order. It also bounds what is
// fetched (full), and signals when a record done may have made room (freed).
type watermark struct {
	mu          sync.Mutex
	offsets     []int64 // fetched, not yet below the watermark, ascending
	done        []bool
	next        int64 // the watermark when nothing is pending
	undone      int   // how many of offsets are not done
	maxInFlight int
	space       chan struct{} // holds a signal once a record is done
}

// newWatermark returns the watermark of a partition starting at start (-1:
// learnt from the first fetched record), allowing maxInFlight records in
// flight (Config.MaxInFlight).
func newWatermark(start int64, maxInFlight int) *watermark {
	return &watermark{next: start, maxInFlight: maxInFlight, space: make(chan struct{}, 1)}
}

// add records a fetched offset; offsets arrive in ascending order.
func (w *watermark) add(offset int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.next < 0 && len(w.offsets) == 0 {
		w.next = offset // the partition's start was not known before the first fetch
	}
	w.offsets = append(w.offsets, offset)
	w.done = append(w.done, false)
	w.undone++
}

// markDone records offset as handled.
func (w *watermark) markDone(offset int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	i := sort.Search(len(w.offsets), func(i int) bool { return w.offsets[i] >= offset })
	if i < len(w.offsets) && w.offsets[i] == offset && !w.done[i] {
		w.done[i] = true
		w.undone--
		select {
		case w.space <- struct{}{}:
		default: // a signal is already waiting
		}
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

// value returns the offset to commit.
func (w *watermark) value() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.next
}

// full reports whether the partition must wait before fetching more: it has
// maxInFlight records in flight, or maxTrackedPerInFlight times as many
// tracked above the watermark.
func (w *watermark) full() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.undone >= w.maxInFlight || len(w.offsets) >= maxTrackedPerInFlight*w.maxInFlight
}

// freed receives a signal after a record is done, so that a partition waiting
// while full looks again. A signal may be stale (sent for a record done before
// the last look): the receiver checks full again.
func (w *watermark) freed() <-chan struct{} { return w.space }

// maxTrackedPerInFlight bounds the records tracked above a partition's
// watermark, done or not, as a multiple of Config.MaxInFlight: a record in
// flight for long (a slow destination's transaction) lets the partition go on
// for this many more records (a million by default, 9 bytes each), and a
// crash replays at most as many.
const maxTrackedPerInFlight = 100
