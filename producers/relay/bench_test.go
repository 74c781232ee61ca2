package relay_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/producers/relay"
	"github.com/fedpipe/fedpipe/schema"
)

// BenchmarkRelayThroughput measures how fast the relay drains a backlog of
// events (one in five a membership with a state delta, PDUs of about 200
// bytes) into a kfake broker on loopback, with acks from all replicas.
func BenchmarkRelayThroughput(b *testing.B) {
	ctx := context.Background()
	cluster, addr := testenv.Broker(b)
	for _, topic := range []string{"fedpipe.room", "fedpipe.state"} {
		if err := cluster.CreateTopic(topic, 16, nil); err != nil {
			b.Fatal(err)
		}
	}
	pool := testenv.Pool(b, testenv.Database(b))
	if err := schema.Migrate(ctx, pool); err != nil {
		b.Fatal(err)
	}
	// The writers fedpipe's relay stage uses: their batch limits decide
	// kafka-go's allocation per round.
	room, state := kafkaio.NewRelayWriter([]string{addr}, "fedpipe.room"), kafkaio.NewRelayWriter([]string{addr}, "fedpipe.state")
	defer room.Close()
	defer state.Close()

	const backlog = 5000
	published, seq := 0, 0
	for b.Loop() {
		b.StopTimer()
		var last int64
		for start := 0; start < backlog; start += 500 {
			batch := make([]outbox.EventWithDeltas, 500)
			for i := range batch {
				member := ""
				if seq%5 == 0 {
					member = fmt.Sprintf("@u%d:remote.test", seq)
				}
				batch[i] = ev(fmt.Sprintf("!room%d:hs.test", seq%100), seq, member)
				seq++
			}
			positions, err := outbox.PersistBatch(ctx, pool, batch)
			if err != nil {
				b.Fatal(err)
			}
			last = positions[len(positions)-1]
		}
		r, err := relay.New(relay.Config{Instance: "bench", PollInterval: 5 * time.Millisecond}, pool, room, state, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		rctx, cancel := context.WithCancel(ctx)
		g, gctx := errgroup.WithContext(rctx)
		g.Go(func() error { return r.Run(gctx) })
		testenv.Eventually(b, time.Minute, "the relay to drain the backlog", func() bool {
			var pos int64
			_ = pool.QueryRow(ctx, "SELECT COALESCE((SELECT position FROM relay_positions WHERE stream = 'events'), 0)").Scan(&pos)
			return pos >= last
		})
		cancel()
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		published += backlog
	}
	b.ReportMetric(float64(published)/b.Elapsed().Seconds(), "events/s")
}
