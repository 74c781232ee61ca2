package runtime

import (
	"sync"
	"time"
)

// Progress applies the stall rule of the group's stall watch (records waiting
// and the same committed offset for at least after) to samples taken by
// someone else: the admin status page reads every group's offsets and shows
// which partitions move. Safe for concurrent use.
type Progress struct {
	mu    sync.Mutex
	track stallTracker
	last  map[partKey]int64 // committed offset at the previous sample
}

// NewProgress returns a Progress judging stalls after after.
func NewProgress(after time.Duration) *Progress {
	return &Progress{track: stallTracker{after: after, parts: map[partKey]*partProgress{}}, last: map[partKey]int64{}}
}

// PartitionProgress is what one sample says about a partition.
type PartitionProgress struct {
	// Moved: the committed offset changed since the previous sample.
	Moved bool
	// Stalled: records have waited at the same committed offset for the stall
	// threshold; StalledFor says how long.
	Stalled    bool
	StalledFor time.Duration
}

// Observe records a sample of a group's partition taken at now.
func (p *Progress) Observe(now time.Time, group, topic string, partition int, committed, lag int64) PartitionProgress {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := partKey{group + "\x00" + topic, partition}
	prev, seen := p.last[k]
	p.last[k] = committed
	ev := p.track.observe(now, k, committed, lag)
	return PartitionProgress{Moved: seen && prev != committed, Stalled: ev.stalled, StalledFor: ev.stalledFor}
}
