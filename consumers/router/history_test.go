package router

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

// history is a store with a random membership history: old changes stored ten
// days ago, then recent ones.
type history struct {
	pool    *pgxpool.Pool
	st      store
	rooms   []string
	lastOld int64 // the highest position stored ten days ago
	last    int64
	// oldJoins counts (room, user) pairs whose last old change is a join:
	// the old changes a prune must keep.
	oldJoins int
	old      int
}

func newHistory(t testing.TB, seed uint64) *history {
	return newHistoryOf(t, seed, 300, 150, 3)
}

// newHistoryOf stores old changes ten days ago, then recent ones, among rooms
// of 24 users each.
func newHistoryOf(t testing.TB, seed uint64, old, recent, rooms int) *history {
	t.Helper()
	ctx := context.Background()
	pool := testenv.Pool(t, testenv.Database(t))
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	h := &history{pool: pool, st: store{pool}}
	for i := range rooms {
		h.rooms = append(h.rooms, fmt.Sprintf("!r%d:hs.test", i))
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	gen := func(n int) []change {
		var out []change
		for range n {
			h.last += 1 + rng.Int64N(3)
			out = append(out, change{roomID: h.rooms[rng.IntN(len(h.rooms))], userID: fmt.Sprintf("@u%d:s%d.test", rng.IntN(8), rng.IntN(3)),
				position: h.last, joined: rng.IntN(3) > 0})
		}
		return out
	}
	olds := gen(old)
	for c := range slices.Chunk(olds, 1000) {
		if err := h.st.save(ctx, c...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `UPDATE router_membership_changes SET stored_at = now() - interval '10 days'`); err != nil {
		t.Fatal(err)
	}
	h.lastOld = h.last
	h.old = len(olds)
	latest := map[[2]string]bool{}
	for _, c := range olds {
		latest[[2]string{c.roomID, c.userID}] = c.joined
	}
	for _, joined := range latest {
		if joined {
			h.oldJoins++
		}
	}
	for c := range slices.Chunk(gen(recent), 1000) {
		if err := h.st.save(ctx, c...); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// replayViews is, for every position a replay can reach (those after the old
// changes), each room's users joined as of the position before it.
func (h *history) replayViews(t *testing.T) map[string][]string {
	t.Helper()
	views := map[string][]string{}
	for _, room := range h.rooms {
		for pos := h.lastOld + 1; pos <= h.last+1; pos++ {
			joined, err := h.st.joinedBefore(context.Background(), room, pos)
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(joined)
			views[fmt.Sprintf("%s@%d", room, pos)] = joined
		}
	}
	return views
}

func (h *history) count(t testing.TB, where string) int {
	t.Helper()
	var n int
	if err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM router_membership_changes WHERE `+where).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestPruningKeepsWhatAReplayNeeds(t *testing.T) {
	for seed := range uint64(3) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			h := newHistory(t, seed)
			before := h.replayViews(t)
			p, err := NewHistoryPruner(HistoryConfig{Keep: 7 * 24 * time.Hour, Chunk: 7}, h.pool, nil, "", slog.New(slog.DiscardHandler), nil)
			if err != nil {
				t.Fatal(err)
			}
			// Two rounds at once: they take turns, and together delete each
			// prunable change once.
			var g errgroup.Group
			deleted := make([]int64, 2)
			for i := range deleted {
				g.Go(func() (err error) {
					deleted[i], err = p.Prune(context.Background(), 7*24*time.Hour)
					return err
				})
			}
			if err := g.Wait(); err != nil {
				t.Error(err)
			}
			if got, want := deleted[0]+deleted[1], int64(h.old-h.oldJoins); got != want {
				t.Errorf("deleted %d changes (%v), want %d: the %d old ones but the last join of each of %d users", got, deleted, want, h.old, h.oldJoins)
			}
			if got := h.count(t, "stored_at < now() - interval '7 days'"); got != h.oldJoins {
				t.Errorf("%d old changes left, want %d (the last change of each user that is a join)", got, h.oldJoins)
			}
			if got := h.count(t, "stored_at >= now() - interval '7 days'"); got != 150 {
				t.Errorf("%d recent changes left, want all 150", got)
			}
			after := h.replayViews(t)
			for k, want := range before {
				if got := after[k]; !slices.Equal(got, want) {
					t.Errorf("joined before %s: %v after pruning, %v before", k, got, want)
				}
			}
			if n, err := p.Prune(context.Background(), 7*24*time.Hour); err != nil || n != 0 {
				t.Errorf("pruning again deleted %d (%v), want nothing", n, err)
			}
		})
	}
}

func TestPruningKeepsHistoryAsLongAsTheRoomTopicKeepsRecords(t *testing.T) {
	cluster, addr := testenv.Broker(t)
	for topic, cfg := range map[string]map[string]string{
		"fedpipe.room": {"retention.ms": "3600000", "segment.ms": "3600000"},
		"hour.room":    {"retention.ms": "3600000", "segment.ms": "7200000"},
		"forever.room": {"retention.ms": "-1"},
	} {
		if err := cluster.CreateTopic(topic, 1, cfg); err != nil {
			t.Fatal(err)
		}
	}
	if err := cluster.CreateTopic("default.room", 1, nil); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for topic, want := range map[string]time.Duration{
		"hour.room":    time.Hour + 2*time.Hour + HistoryMargin,         // a record lives until its segment's newest is past retention
		"default.room": 7*24*time.Hour + 7*24*time.Hour + HistoryMargin, // Kafka's default retention.ms and segment.ms
		"forever.room": -1,
	} {
		p, err := NewHistoryPruner(HistoryConfig{}, &pgxpool.Pool{}, []string{addr}, topic, slog.New(slog.DiscardHandler), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := p.Keep(ctx); err != nil || got != want {
			t.Errorf("%s: keep %v (%v), want %v", topic, got, err, want)
		}
	}
	p, err := NewHistoryPruner(HistoryConfig{}, &pgxpool.Pool{}, []string{addr}, "missing.room", slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := p.Keep(ctx); err == nil {
		t.Errorf("a missing topic: keep %v, want an error", got)
	}

	// Run, following fedpipe.room's hour: changes stored ten days ago are pruned.
	h := newHistory(t, 7)
	reg := prometheus.NewRegistry()
	p, err = NewHistoryPruner(HistoryConfig{Interval: 50 * time.Millisecond}, h.pool, []string{addr}, "fedpipe.room", slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	var g errgroup.Group
	g.Go(func() error { return p.Run(runCtx) })
	testenv.Eventually(t, 30*time.Second, "old changes pruned", func() bool {
		return h.count(t, "stored_at < now() - interval '7 days'") == h.oldJoins
	})
	stop()
	if err := g.Wait(); err != nil {
		t.Errorf("Run returned %v", err)
	}
	if got := value(t, p.pruned); got != float64(h.old-h.oldJoins) {
		t.Errorf("fedpipe_router_history_pruned_total = %v, want %d", got, h.old-h.oldJoins)
	}
}

// BenchmarkPruneHistory prunes 200,000 changes stored ten days ago in 2,000
// rooms (with 20,000 recent ones): the time per 1,000-row transaction is what a
// relay round overlapping it may wait.
func BenchmarkPruneHistory(b *testing.B) {
	for range b.N {
		b.StopTimer()
		h := newHistoryOf(b, 1, 200_000, 20_000, 2_000)
		p, err := NewHistoryPruner(HistoryConfig{Keep: 7 * 24 * time.Hour}, h.pool, nil, "", slog.New(slog.DiscardHandler), nil)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		n, err := p.Prune(context.Background(), 7*24*time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		elapsed := time.Since(start)
		b.StopTimer()
		chunks := h.old/1000 + 1 // each transaction examines up to 1,000 old changes
		b.ReportMetric(float64(n), "deleted")
		b.ReportMetric(float64(elapsed.Microseconds())/1000/float64(chunks), "ms/transaction")
		b.ReportMetric(float64(n)/elapsed.Seconds(), "rows/s")
	}
}
