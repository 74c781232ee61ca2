package sender_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/consumers/sender"
	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

// acceptAll is a Transport that accepts every transaction in-process. It
// stands in for the federation client only in BenchmarkIdleDestinations,
// which measures the queue's own memory: a real client's connection pool
// (one idle TLS connection per destination) would be measured instead.
type acceptAll struct{ txns atomic.Int64 }

func (a *acceptAll) SendTransaction(context.Context, *txn.Transaction) (txn.Response, error) {
	a.txns.Add(1)
	return txn.Response{}, nil
}

// benchInt is the integer in the environment variable name, or def.
func benchInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// heapNow is the live heap after two collections: HeapAlloc and HeapInuse.
func heapNow() (alloc, inuse uint64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, ms.HeapInuse
}

// writeHeapProfile writes the heap profile to path while the destinations
// are held (-memprofile writes it after the benchmark, once they are gone).
func writeHeapProfile(tb testing.TB, path string) {
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkIdleDestinations measures the heap an idle destination keeps
// (issue 18: ≤ 2 KiB): a queue.Manager on the PostgreSQL Store gets one PDU
// for each of FEDPIPE_BENCH_DESTINATIONS destinations (default 100,000; the
// names and room ids are made as a record decoder makes them, one string
// each), delivers every one through an in-process Transport that accepts
// everything (see acceptAll: the queue's memory is measured, not a
// federation client's connections), waits until no worker runs, and
// reports the live heap it grew by (after two collections) per destination,
// and the goroutines left per destination. Run with
// -bench IdleDestinations -benchtime 1x; FEDPIPE_BENCH_HEAPPROFILE=FILE
// writes the heap profile while the destinations are idle (then
// go tool pprof -sample_index=inuse_space -top FILE).
func BenchmarkIdleDestinations(b *testing.B) {
	n := benchInt(b, "FEDPIPE_BENCH_DESTINATIONS", 100_000)
	pool := testenv.Pool(b, testenv.Database(b))
	if err := schema.Migrate(context.Background(), pool); err != nil {
		b.Fatal(err)
	}
	for it := range b.N {
		for unit, v := range idleDestinations(b, pool, n, it) {
			b.ReportMetric(v, unit)
		}
	}
}

// The idle-destinations run and its checks at a small size, in every test
// run: an idle destination keeps no goroutine.
func TestIdleDestinationsBenchmarkChecksAtSmallSize(t *testing.T) {
	pool := testenv.Pool(t, testenv.Database(t))
	if err := schema.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	if f := idleDestinations(t, pool, 500, 0); f["goroutines/dest"] >= 0.05 {
		t.Fatalf("%.3f goroutines left per idle destination, want none", f["goroutines/dest"])
	}
}

// idleDestinations runs n destinations to idle (run names them apart from
// an earlier run's) and returns the figures by unit.
func idleDestinations(tb testing.TB, pool *pgxpool.Pool, n, run int) map[string]float64 {
	tb.Helper()
	figures := map[string]float64{}
	fig := func(v float64, unit string) { figures[unit] = v }
	const rooms = 1000
	ctx := context.Background()
	tr := &acceptAll{}
	reg := prometheus.NewRegistry()
	m, err := queue.NewManager(queue.Config{Origin: "me.test"}, tr, sender.NewStore(pool), slog.New(slog.DiscardHandler), reg)
	if err != nil {
		tb.Fatal(err)
	}
	stop := testenv.Background(tb, "queue manager", m.Run)
	testenv.Eventually(tb, 10*time.Second, "the manager to run", func() bool {
		return m.EnqueuePDU(ctx, fmt.Sprintf("warm%d.test", run), queue.PDU{RoomID: "!warm:me.test", EventID: "$warm", Position: 1, JSON: []byte(`{}`)}, func() {}) == nil
	})
	testenv.Eventually(tb, 10*time.Second, "the warm-up destination idle", func() bool {
		return tr.txns.Load() == 1 && testenv.Value(tb, reg, "fedpipe_sender_active_destinations") == 0
	})
	baseAlloc, baseInuse := heapNow()
	baseG := runtime.NumGoroutine()

	start := time.Now()
	var done atomic.Int64
	// Eight feeders, as eight partitions' handlers would enqueue.
	g, gctx := errgroup.WithContext(ctx)
	const feeders = 8
	for f := range feeders {
		g.Go(func() error {
			for i := f; i < n; i += feeders {
				dest := fmt.Sprintf("d%d-%d.test", run, i)
				p := queue.PDU{RoomID: fmt.Sprintf("!room%d:me.test", i%rooms), EventID: fmt.Sprintf("$e%d-%d", run, i), Position: int64(i + 1),
					JSON: []byte(fmt.Sprintf(`{"room_id":"!room%d:me.test","content":{"n":%d}}`, i%rooms, i))}
				if err := m.EnqueuePDU(gctx, dest, p, func() { done.Add(1) }); err != nil {
					return fmt.Errorf("enqueueing for %s: %w", dest, err)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		tb.Fatal(err)
	}
	testenv.Eventually(tb, 10*time.Minute, "every PDU delivered and every destination idle", func() bool {
		return done.Load() == int64(n) && testenv.Value(tb, reg, "fedpipe_sender_active_destinations") == 0
	})
	elapsed := time.Since(start)
	if got := tr.txns.Load(); got != int64(n)+1 {
		tb.Fatalf("%d transactions for %d destinations (and the warm-up one), want one each", got, n)
	}
	alloc, inuse := heapNow()
	goroutines := runtime.NumGoroutine()
	if l := len(m.Destinations()); l != n+1 {
		tb.Fatalf("%d destinations held, want %d", l, n+1)
	}
	if path := os.Getenv("FEDPIPE_BENCH_HEAPPROFILE"); path != "" {
		writeHeapProfile(tb, path)
	}
	fig((float64(alloc)-float64(baseAlloc))/float64(n), "heap-B/dest")
	fig((float64(inuse)-float64(baseInuse))/float64(n), "inuse-B/dest")
	fig(float64(goroutines-baseG)/float64(n), "goroutines/dest")
	fig(float64(n)/elapsed.Seconds(), "dests/s")
	runtime.KeepAlive(m)
	if err := stop(); err != nil {
		tb.Fatal(err)
	}
	return figures
}
