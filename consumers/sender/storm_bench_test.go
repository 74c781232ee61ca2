package sender_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fedpipe/fedpipe/consumers/sender"
	"github.com/fedpipe/fedpipe/federation/client"
	"github.com/fedpipe/fedpipe/federation/discovery"
	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/federation/signing"
	"github.com/fedpipe/fedpipe/federation/testreceiver"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/schema"
)

// cpuSeconds is the process's CPU time so far (user and system).
func cpuSeconds(tb testing.TB) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// percentile is the p-th percentile (0–1) of sorted ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	return ds[min(len(ds)-1, int(p*float64(len(ds))))]
}

// BenchmarkCatchUpStorm measures a catch-up storm (issue 18):
// FEDPIPE_BENCH_STORM destinations (default 10,000) are backed off with
// catch-up rows in PostgreSQL (FEDPIPE_BENCH_STORM_ROOMS missed rooms each,
// default 2, whose events are stored), then their backoff ends at once.
// Meanwhile 50 healthy destinations get live PDUs at
// FEDPIPE_BENCH_HEALTHY_RATE PDUs a second (default 200, spread over them).
// A queue.Manager with the sender's PostgreSQL Store and Fence sends through
// the federation client over loopback HTTPS to testreceiver (which hosts every
// destination, so its TLS handshakes and signature checks are in the same
// process and in the CPU figure). It reports the time until every storm
// destination drained (no catch-up row left, each received its rooms'
// latest events), the process CPU seconds used meanwhile, catch-up wake-ups
// per second (peak over one-second windows, and mean), and the healthy
// destinations' enqueue → arrival p50/p99 during the storm and during
// FEDPIPE_BENCH_QUIET_SECONDS (default 10) before it. The pacing is the
// queue's default unless FEDPIPE_BENCH_WAKEUPS sets WakeupsPerTick. Run with
// -bench CatchUpStorm -benchtime 1x -timeout 30m. fence-p99-ms is the p99
// of the Fence's Acquire during the storm; FEDPIPE_BENCH_NO_FENCE=1 runs
// without the fence, to show its share of the healthy latency.
func BenchmarkCatchUpStorm(b *testing.B) {
	c := stormConfig{
		storm:     benchInt(b, "FEDPIPE_BENCH_STORM", 10_000),
		roomsEach: benchInt(b, "FEDPIPE_BENCH_STORM_ROOMS", 2),
		rate:      benchInt(b, "FEDPIPE_BENCH_HEALTHY_RATE", 200),
		quiet:     time.Duration(benchInt(b, "FEDPIPE_BENCH_QUIET_SECONDS", 10)) * time.Second,
		wakeups:   benchInt(b, "FEDPIPE_BENCH_WAKEUPS", 0), // 0: the queue's default
		noFence:   os.Getenv("FEDPIPE_BENCH_NO_FENCE") != "",
	}
	for it := range b.N {
		c.run = it
		for unit, v := range catchUpStorm(b, c) {
			b.ReportMetric(v, unit)
		}
	}
}

// The storm's run and checks (every storm destination got its missed
// rooms, every live PDU arrived, no overlapping transactions), at a small
// size, in every test run.
func TestCatchUpStormBenchmarkChecksAtSmallSize(t *testing.T) {
	if f := catchUpStorm(t, stormConfig{storm: 40, roomsEach: 2, rate: 50, quiet: time.Second}); f["drain-s"] <= 0 {
		t.Fatalf("no figures: %v", f)
	}
}

// stormConfig sizes catchUpStorm.
type stormConfig struct {
	storm, roomsEach int
	rate             int // live PDUs a second over the healthy destinations
	quiet            time.Duration
	wakeups          int // Config.WakeupsPerTick; 0: the default
	noFence          bool
	run              int // names the destinations apart across runs
}

// catchUpStorm runs the storm and returns its figures by unit.
func catchUpStorm(tb testing.TB, c stormConfig) map[string]float64 {
	tb.Helper()
	figures := map[string]float64{}
	fig := func(v float64, unit string) { figures[unit] = v }
	nStorm, roomsEach, rate, quiet := c.storm, c.roomsEach, c.rate, c.quiet
	const nHealthy, catchUpRooms = 50, 100
	ctx := context.Background()
	pool := testenv.Pool(tb, testenv.Database(tb))
	if err := schema.Migrate(ctx, pool); err != nil {
		tb.Fatal(err)
	}
	var storm, healthy []string
	for i := range nStorm {
		storm = append(storm, fmt.Sprintf("storm%d-%d.test", c.run, i))
	}
	for i := range nHealthy {
		healthy = append(healthy, fmt.Sprintf("healthy%d-%d.test", c.run, i))
	}
	key, _ := signing.GenerateKey()
	recv, err := testreceiver.Start(testreceiver.Config{Names: append(slices.Clone(storm), healthy...),
		Keys: func(string, string) (ed25519.PublicKey, error) { return key.Public(), nil }})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = recv.Close() })
	static := map[string]string{}
	for _, d := range append(slices.Clone(storm), healthy...) {
		static[d] = recv.Addr()
	}
	res, _ := discovery.New(discovery.Config{Static: static})
	cl, err := client.New(client.Config{Origin: "me.test", RootCAs: recv.CAPool(), AllowedNetworks: []string{"127.0.0.0/8"}}, key, res, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}

	// The storm's state, as an outage leaves it: each destination backed
	// off for a day, with its missed rooms' latest events recorded.
	evs := make([]outbox.EventWithDeltas, catchUpRooms)
	for r := range evs {
		room := fmt.Sprintf("!storm%d:me.test", r)
		pdu := json.RawMessage(fmt.Sprintf(`{"content":{"n":%d},"room_id":%q,"sender":"@a:me.test","type":"m.room.message"}`, r, room))
		evs[r] = outbox.EventWithDeltas{Event: outbox.Event{EventID: fmt.Sprintf("$%043d", 900000+r), RoomID: room, RoomVersion: "10", Sender: "@a:me.test", Type: "m.room.message", PDU: pdu}}
	}
	pos, err := outbox.PersistBatch(ctx, pool, evs)
	if err != nil {
		tb.Fatal(err)
	}
	var cRooms, cIDs []string
	var cPos []int64
	for _, e := range evs {
		cRooms, cIDs = append(cRooms, e.Event.RoomID), append(cIDs, e.Event.EventID)
	}
	cPos = pos
	outage := time.Now().Add(24 * time.Hour).UnixMilli()
	if _, err := pool.Exec(ctx, `INSERT INTO sender_destinations (destination, retry_interval_ms, next_attempt_ms, failure_ts)
		SELECT d, 600000, $2::bigint, $2::bigint - 86400000 FROM unnest($1::text[]) AS d`, storm, outage); err != nil {
		tb.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO sender_catchup (destination, room_id, position, event_id)
		SELECT d.d, c.r, c.p, c.e FROM unnest($1::text[]) WITH ORDINALITY AS d(d, i)
		CROSS JOIN generate_series(0, $5 - 1) AS k
		JOIN unnest($2::text[], $3::bigint[], $4::text[]) WITH ORDINALITY AS c(r, p, e, j) ON c.j = (d.i + k) % $6 + 1`,
		storm, cRooms, cPos, cIDs, roomsEach, catchUpRooms); err != nil {
		tb.Fatal(err)
	}
	stormRows := func() int {
		var n int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM sender_catchup").Scan(&n); err != nil {
			tb.Fatal(err)
		}
		return n
	}
	if got := stormRows(); got != nStorm*roomsEach {
		tb.Fatalf("%d catch-up rows, want %d", got, nStorm*roomsEach)
	}

	reg := prometheus.NewRegistry()
	fence := sender.NewFence(pool.Config().ConnConfig, slog.New(slog.DiscardHandler))
	tf := &timedFence{f: fence}
	qc := queue.Config{Origin: "me.test", Owns: func(string) bool { return true }, Fence: tf, WakeupsPerTick: c.wakeups}
	if c.noFence {
		qc.Fence = nil // to see the fence's share of the healthy latency
	}
	m, err := queue.NewManager(qc,
		cl, sender.NewStore(pool), slog.New(slog.DiscardHandler), reg)
	if err != nil {
		tb.Fatal(err)
	}
	testenv.Background(tb, "fence", fence.Run)
	testenv.Background(tb, "queue manager", m.Run)

	// Live traffic: one PDU every 1/rate s, to the healthy destinations in
	// turn, each carrying its enqueue time.
	var mu sync.Mutex
	sent := map[int64]time.Time{} // by the PDU's n
	feedErr := make(chan error, 1)
	stopFeed := testenv.Background(tb, "live feed", func(ctx context.Context) error {
		t := time.NewTicker(time.Second / time.Duration(rate))
		defer t.Stop()
		for n := int64(1); ; n++ {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
			dest := healthy[int(n)%nHealthy]
			pdu, _ := json.Marshal(map[string]any{"content": map[string]any{"n": n}, "room_id": "!live:me.test", "sender": "@a:me.test", "type": "m.room.message"})
			mu.Lock()
			sent[n] = time.Now()
			mu.Unlock()
			if err := m.EnqueuePDU(ctx, dest, queue.PDU{RoomID: "!live:me.test", EventID: fmt.Sprintf("$live%d", n), Position: n, JSON: pdu}, func() {}); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				select {
				case feedErr <- err:
				default:
				}
				return err
			}
		}
	})
	// latencies returns the enqueue → arrival times of the live PDUs
	// enqueued in [from, to).
	latencies := func(from, to time.Time) []time.Duration {
		var out []time.Duration
		for _, d := range healthy {
			pdus, at := recv.PDUArrivals(d)
			for i, p := range pdus {
				var v struct{ Content struct{ N int64 } }
				if err := json.Unmarshal(p, &v); err != nil {
					tb.Fatal(err)
				}
				mu.Lock()
				s, ok := sent[v.Content.N]
				mu.Unlock()
				if ok && !s.Before(from) && s.Before(to) {
					out = append(out, at[i].Sub(s))
				}
			}
		}
		slices.Sort(out)
		return out
	}

	quietFrom := time.Now().Add(time.Second) // past the first connections
	time.Sleep(quiet + time.Second)
	quietTo := time.Now()
	cpuBefore := cpuSeconds(tb)

	// The outage ends: every storm destination is due at once.
	tf.reset()
	start := time.Now()
	if _, err := pool.Exec(ctx, "UPDATE sender_destinations SET next_attempt_ms = $1 WHERE destination LIKE 'storm%'", start.UnixMilli()); err != nil {
		tb.Fatal(err)
	}
	var perSecond []float64
	last, lastAt := 0.0, time.Now()
	for stormRows() > 0 {
		select {
		case err := <-feedErr:
			tb.Fatal(err)
		default:
		}
		if time.Since(start) > 25*time.Minute {
			tb.Fatalf("the storm did not drain in 25 minutes: %d catch-up rows left", stormRows())
		}
		time.Sleep(100 * time.Millisecond)
		if now := time.Now(); now.Sub(lastAt) >= time.Second {
			n := testenv.Value(tb, reg, "fedpipe_sender_catchups_total")
			perSecond = append(perSecond, (n-last)/now.Sub(lastAt).Seconds())
			last, lastAt = n, now
		}
	}
	drained := time.Since(start)
	stormCPU := cpuSeconds(tb) - cpuBefore
	stormTo := time.Now()
	if err := stopFeed(); err != nil {
		tb.Fatal(err)
	}
	mu.Lock()
	total := len(sent)
	mu.Unlock()
	testenv.Eventually(tb, time.Minute, "every live PDU delivered", func() bool {
		n := 0
		for _, d := range healthy {
			n += len(recv.PDUs(d))
		}
		return n == total
	})
	for _, d := range storm {
		if got := len(recv.PDUs(d)); got != roomsEach {
			tb.Fatalf("%s received %d catch-up PDUs, want %d (one per missed room)", d, got, roomsEach)
		}
	}
	if n := recv.ConcurrentRejections(); n != 0 {
		tb.Fatalf("%d overlapping transactions", n)
	}
	wakes := testenv.Value(tb, reg, "fedpipe_sender_catchups_total")
	qLat, sLat := latencies(quietFrom, quietTo), latencies(start, stormTo)
	fig(drained.Seconds(), "drain-s")
	fig(stormCPU, "cpu-s")
	fig(slices.Max(append(perSecond, 0)), "wakeups/s-peak")
	fig(wakes/drained.Seconds(), "wakeups/s-mean")
	fig(float64(percentile(qLat, 0.5).Microseconds())/1000, "quiet-p50-ms")
	fig(float64(percentile(qLat, 0.99).Microseconds())/1000, "quiet-p99-ms")
	fig(float64(percentile(sLat, 0.5).Microseconds())/1000, "storm-p50-ms")
	fig(float64(percentile(sLat, 0.99).Microseconds())/1000, "storm-p99-ms")
	acq := tf.acquires()
	fig(float64(percentile(acq, 0.99).Microseconds())/1000, "fence-p99-ms")
	tb.Logf("%d storm destinations × %d rooms drained in %s (%.0f wake-ups); %d live PDUs in the quiet %s, %d during the storm",
		nStorm, roomsEach, drained.Round(time.Millisecond), wakes, len(qLat), quietTo.Sub(quietFrom).Round(time.Second), len(sLat))
	return figures
}

// timedFence is the sender's Fence, timing Acquire: every worker start of
// every destination takes its fence on the Fence's one connection, so a
// storm's workers queue there beside the healthy destinations' workers.
type timedFence struct {
	f   *sender.Fence
	mu  sync.Mutex
	acq []time.Duration
}

func (t *timedFence) Acquire(ctx context.Context, dest string) (context.Context, error) {
	start := time.Now()
	held, err := t.f.Acquire(ctx, dest)
	t.mu.Lock()
	t.acq = append(t.acq, time.Since(start))
	t.mu.Unlock()
	return held, err
}

func (t *timedFence) Release(dest string) { t.f.Release(dest) }

func (t *timedFence) reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.acq = nil
}

// acquires are the Acquire durations since reset, sorted.
func (t *timedFence) acquires() []time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := slices.Clone(t.acq)
	slices.Sort(out)
	return out
}
