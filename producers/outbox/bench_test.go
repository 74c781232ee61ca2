package outbox_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/schema"
)

// BenchmarkPersistBatch measures persisting batches of 100 member events, each
// with one state delta, in one transaction per batch.
func BenchmarkPersistBatch(b *testing.B) {
	ctx := context.Background()
	pool := testenv.Pool(b, testenv.Database(b))
	if err := schema.Migrate(ctx, pool); err != nil {
		b.Fatal(err)
	}
	const batchSize = 100
	n := 0
	b.ResetTimer()
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
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
}
