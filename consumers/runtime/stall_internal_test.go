package runtime

import (
	"testing"
	"time"
)

func TestStallTrackerRule(t *testing.T) {
	const after = time.Minute
	k := partKey{"in", 0}
	t0 := time.Unix(1_000_000, 0)
	type step struct {
		at             time.Duration
		committed, lag int64
		want           stallEvent
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"records waiting and no progress for the threshold is a stall, warned once per threshold", []step{
			{0, 10, 5, stallEvent{}},
			{59 * time.Second, 10, 5, stallEvent{}},
			{60 * time.Second, 10, 5, stallEvent{stalled: true, warn: true, stalledFor: 60 * time.Second}},
			{90 * time.Second, 10, 7, stallEvent{stalled: true, stalledFor: 90 * time.Second}},
			{120 * time.Second, 10, 7, stallEvent{stalled: true, warn: true, stalledFor: 120 * time.Second}},
		}},
		{"a moving committed offset is progress, however large the lag", []step{
			{0, 10, 500, stallEvent{}},
			{50 * time.Second, 20, 500, stallEvent{}},
			{100 * time.Second, 30, 500, stallEvent{}},
			{149 * time.Second, 30, 500, stallEvent{}},
		}},
		{"an idle partition with nothing to consume is not stalled", []step{
			{0, 10, 0, stallEvent{}},
			{10 * time.Minute, 10, 0, stallEvent{}},
		}},
		{"progress after a stall is a recovery", []step{
			{0, -1, 3, stallEvent{}},
			{2 * time.Minute, -1, 3, stallEvent{stalled: true, warn: true, stalledFor: 2 * time.Minute}},
			{3 * time.Minute, 3, 0, stallEvent{recovered: true, stalledFor: 3 * time.Minute}},
			{4 * time.Minute, 3, 1, stallEvent{}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := stallTracker{after: after, parts: map[partKey]*partProgress{}}
			for i, s := range tc.steps {
				if got := tr.observe(t0.Add(s.at), k, s.committed, s.lag); got != s.want {
					t.Fatalf("step %d (at %v, committed %d, lag %d): got %+v, want %+v", i, s.at, s.committed, s.lag, got, s.want)
				}
			}
		})
	}
}
