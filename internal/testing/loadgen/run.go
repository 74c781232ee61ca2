package loadgen

import (
	"context"
	"fmt"
	"time"
)

// Persister stores a batch of events (with their state deltas) the way a
// homeserver would, in one transaction, and returns when it has committed.
type Persister func(ctx context.Context, batch []Event) error

// Ingest persists the plan's events in order, in batches of batchSize, and records
// when each batch committed (for latency figures). progress, when not nil, is
// called after each batch with the number of events persisted so far.
func (p *Plan) Ingest(ctx context.Context, persist Persister, batchSize int, progress func(done int)) ([]time.Time, error) {
	if batchSize <= 0 {
		batchSize = 100
	}
	committed := make([]time.Time, len(p.Events))
	for start := 0; start < len(p.Events); start += batchSize {
		end := min(start+batchSize, len(p.Events))
		if err := persist(ctx, p.Events[start:end]); err != nil {
			return committed, fmt.Errorf("persisting events %d-%d: %w", start, end-1, err)
		}
		now := time.Now()
		for i := start; i < end; i++ {
			committed[i] = now
		}
		if progress != nil {
			progress(end)
		}
	}
	return committed, nil
}
