package outbox_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/schema"
)

// BenchmarkPersistBatch measures persisting batches of member events, each
// with one state delta, in one transaction per batch: 100 per batch, and 500
// as the bench's outbox insert baseline (cmd/fedpipe) sends them.
func BenchmarkPersistBatch(b *testing.B) {
	ctx := context.Background()
	pool := testenv.Pool(b, testenv.Database(b))
	if err := schema.Migrate(ctx, pool); err != nil {
		b.Fatal(err)
	}
	n := 0
	for _, batchSize := range []int{100, 500} {
		b.Run(fmt.Sprintf("events=%d", batchSize), func(b *testing.B) {
			start := n
			for b.Loop() {
				batch := make([]outbox.EventWithDeltas, batchSize)
				for i := range batch {
					batch[i] = member(fmt.Sprintf("$%043d", n), fmt.Sprintf("@u%d:remote.test", n), "join")
					n++
				}
				if _, err := outbox.PersistBatch(ctx, pool, batch); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n-start)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
