package relay_test

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/producers/relay"
	"github.com/fedpipe/fedpipe/schema"
)

// BenchmarkRelayThroughput measures how fast the relay drains a backlog of
// events (one in five a membership with a state delta) into a broker with
// acks from all replicas: kfake in process, or the Apache Kafka broker
// FEDPIPE_TEST_KAFKA_BROKERS names (`scripts/kafka start`). It reports
// events/s and the relay's allocation per byte it publishes:
//
//   - published-B/event: key, value and header bytes of the room and state
//     records the broker acknowledged, per event.
//   - alloc-B/published-B (Apache Kafka only): bytes the process allocated
//     (runtime.MemStats.TotalAlloc) from the relay's start until the broker
//     acknowledged the backlog's last record, over those published bytes.
//     That is the relay (its reads, records, writers and their connection
//     pools) plus the benchmark's wait, which polls an atomic counter and
//     allocates nothing; the backlog's insertion and the relay's construction
//     are outside it.
//   - alloc-with-kfake-B/published-B (kfake): the same, but it includes the
//     in-process broker's own allocations (decoding and storing every batch),
//     so it is not the relay's alone.
func BenchmarkRelayThroughput(b *testing.B) {
	ctx := context.Background()
	k := testenv.NewKafka(b)
	roomTopic, stateTopic := k.CreateTopic(b, "room", 16, nil), k.CreateTopic(b, "state", 16, map[string]string{"cleanup.policy": "compact"})
	pool := testenv.Pool(b, testenv.Database(b))
	if err := schema.Migrate(ctx, pool); err != nil {
		b.Fatal(err)
	}
	// The writers fedpipe's relay stage uses.
	roomW, stateW := kafkaio.NewPartitionWriter([]string{k.Addr}, roomTopic), kafkaio.NewPartitionWriter([]string{k.Addr}, stateTopic)
	defer roomW.Close()
	defer stateW.Close()
	var records, publishedBytes atomic.Int64
	room := meteredWriter{Writer: roomW, topic: roomTopic, records: &records, bytes: &publishedBytes}
	state := meteredWriter{Writer: stateW, topic: stateTopic, records: &records, bytes: &publishedBytes}

	const backlog = 5000
	published, seq := 0, 0
	var want, allocated uint64
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
				want += uint64(1 + 2*len(batch[i].Deltas)) // an event, its deltas on room and on state
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
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		b.StartTimer()
		rctx, cancel := context.WithCancel(ctx)
		g, gctx := errgroup.WithContext(rctx)
		g.Go(func() error { return r.Run(gctx) })
		for deadline := time.Now().Add(time.Minute); uint64(records.Load()) < want; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				b.Fatalf("the relay published %d of %d records in a minute", records.Load(), want)
			}
		}
		runtime.ReadMemStats(&after)
		allocated += after.TotalAlloc - before.TotalAlloc
		testenv.Eventually(b, time.Minute, "the relay to store its position", func() bool {
			var pos int64
			_ = pool.QueryRow(ctx, "SELECT COALESCE((SELECT position FROM relay_positions WHERE stream = 'events'), 0)").Scan(&pos)
			return pos >= last
		})
		b.StopTimer()
		cancel()
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		published += backlog
	}
	b.ReportMetric(float64(published)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(publishedBytes.Load())/float64(published), "published-B/event")
	alloc := "alloc-B/published-B"
	if k.Cluster != nil {
		alloc = "alloc-with-kfake-B/published-B"
	}
	b.ReportMetric(float64(allocated)/float64(publishedBytes.Load()), alloc)
}

// meteredWriter counts the records and bytes (key, value, header keys and
// values) its writer got acknowledged; it allocates nothing.
type meteredWriter struct {
	relay.Writer
	topic          string
	records, bytes *atomic.Int64
}

// Topic names the topic in dead letters, as the writer it wraps does.
func (w meteredWriter) Topic() string { return w.topic }

func (w meteredWriter) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	if err := w.Writer.WriteMessages(ctx, msgs...); err != nil {
		return err
	}
	n := 0
	for i := range msgs {
		m := &msgs[i]
		n += len(m.Key) + len(m.Value)
		for _, h := range m.Headers {
			n += len(h.Key) + len(h.Value)
		}
	}
	w.bytes.Add(int64(n))
	w.records.Add(int64(len(msgs)))
	return nil
}
