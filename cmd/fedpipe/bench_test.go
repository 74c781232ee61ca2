package main

import (
	"bytes"
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkEndToEnd measures (event, destination) deliveries per second and the
// time from the ingest commit to arrival at the receiver, for 1,000 rooms, 50
// remote servers and 100,000 events through an in-process kfake broker (or the
// Apache Kafka of FEDPIPE_TEST_KAFKA_BROKERS), the test PostgreSQL
// (scripts/ensure-postgres) and loopback HTTPS; then, in the same run, each
// stage alone (outbox insert, relay, router, raw kafka-go produce+consume of
// one record per delivery, transaction build+sign, HTTPS send), each as a
// metric and as the ratio of the end-to-end rate to it, and the slowest named
// (fedpipe/slowest). FEDPIPE_BENCH_ROOMS/SERVERS/EVENTS scale it down. By
// default events are ingested as fast as PostgreSQL takes them, so latency
// includes the backlog; FEDPIPE_BENCH_RATE=N paces ingest at N events/s to
// measure latency below saturation; FEDPIPE_BENCH_BASELINES=0 skips the
// stages alone (for a CPU profile of the pipeline only). `fedpipe bench` runs
// the same code.
//
//	go test -run '^$' -bench EndToEnd -benchtime 1x -timeout 30m ./cmd/fedpipe
func BenchmarkEndToEnd(b *testing.B) {
	size := benchSize{rooms: envInt("FEDPIPE_BENCH_ROOMS", 1000), servers: envInt("FEDPIPE_BENCH_SERVERS", 50), events: envInt("FEDPIPE_BENCH_EVENTS", 100000),
		rate: envInt("FEDPIPE_BENCH_RATE", 0), timeout: 30 * time.Minute, baselines: os.Getenv("FEDPIPE_BENCH_BASELINES") != "0"}
	for i := 0; i < b.N; i++ {
		r := endToEnd(b, size)
		b.ReportMetric(r.Rate, "deliveries/s")
		b.ReportMetric(float64(r.P50.Milliseconds()), "p50-ms")
		b.ReportMetric(float64(r.P90.Milliseconds()), "p90-ms")
		b.ReportMetric(float64(r.P99.Milliseconds()), "p99-ms")
		b.ReportMetric(float64(r.PeakHeap)/(1<<20), "peak-heap-MiB")
		b.ReportMetric(float64(r.CPU.Process.Microseconds())/float64(r.Deliveries), "process-CPU-µs/delivery")
		b.ReportMetric(float64(r.CPU.Postgres.Microseconds())/float64(r.Deliveries), "postgres-CPU-µs/delivery")
		b.ReportMetric(r.CPU.Busy, "machine-busy")
		for _, s := range r.Baselines {
			name := strings.NewReplacer(" ", "-", "+", "-").Replace(s.Stage)
			b.ReportMetric(s.Rate(), name+"-"+strings.ReplaceAll(s.Unit, " ", "-")+"/s")
			b.ReportMetric(r.Rate/s.Deliveries(), "fedpipe/"+name)
		}
		slowest, _ := r.Slowest()
		b.ReportMetric(r.Rate/slowest.Deliveries(), "fedpipe/slowest")
		printBenchTable(os.Stderr, r)
	}
}

// BenchmarkSlowRemotes: the end-to-end run at a paced rate (FEDPIPE_BENCH_RATE,
// default 1,000 events/s, below saturation), first with every remote
// healthy, then with 10% of them answering each transaction 30 s late: the
// healthy ones' p99 latency must stay within 20% of the first run's (a slow
// destination pins neither its partition nor its sender).
//
//	go test -run '^$' -bench SlowRemotes -benchtime 1x -timeout 30m ./cmd/fedpipe
func BenchmarkSlowRemotes(b *testing.B) {
	size := benchSize{rooms: envInt("FEDPIPE_BENCH_ROOMS", 200), servers: envInt("FEDPIPE_BENCH_SERVERS", 50), events: envInt("FEDPIPE_BENCH_EVENTS", 20000),
		rate: envInt("FEDPIPE_BENCH_RATE", 1000), timeout: 30 * time.Minute}
	for i := 0; i < b.N; i++ {
		base := endToEnd(b, size)
		slowSize := size
		slowSize.slow = size.servers / 10
		slow := endToEnd(b, slowSize)
		b.ReportMetric(float64(base.P99.Milliseconds()), "p99-ms-all-healthy")
		b.ReportMetric(float64(slow.P99.Milliseconds()), "p99-ms-healthy-beside-slow")
		b.ReportMetric(float64(slow.P99)/float64(base.P99), "p99-ratio")
		if slow.P99 > base.P99*6/5 {
			b.Errorf("healthy servers' p99 %s beside 10%% slow ones, %s without: more than 20%% worse", slow.P99, base.P99)
		}
	}
}

// The end-to-end benchmark's run and checks, at a small size, in every test
// run: a benchmark whose correctness checks never run checks nothing.
func TestEndToEndBenchmarkChecksAtSmallSize(t *testing.T) {
	r := endToEnd(t, benchSize{rooms: 20, servers: 5, events: 2000, timeout: 5 * time.Minute})
	if r.Rate <= 0 || r.P99 <= 0 || r.Deliveries == 0 {
		t.Fatalf("no figures: %+v", r)
	}
}

// endToEnd runs the measurement (benchRun.run) on a fresh test pipeline: a
// missing, unexpected, out-of-order or unknown delivery fails the test.
func endToEnd(tb testing.TB, size benchSize) benchResult {
	tb.Helper()
	p := newPipeline(tb, remotes(size.servers))
	// On stderr: the testing package cuts a benchmark's log short.
	progress := testWriter{tb}.Write
	if _, isBench := tb.(*testing.B); isBench {
		progress = os.Stderr.Write
	}
	run := &benchRun{cfg: p.cfg, in: p.in, recv: p.recv, progress: writerFunc(progress)}
	b, isBench := tb.(*testing.B)
	if isBench {
		b.ResetTimer()
	}
	r, err := run.run(context.Background(), size)
	if isBench {
		b.StopTimer()
	}
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// `fedpipe bench` at a tiny size on a configured broker and database: it
// checks every delivery, prints a table with every stage at a positive rate,
// its ratio and latency, and leaves no topic or group of its own behind.
func TestBenchCommandAtTinySize(t *testing.T) {
	k := testenv.NewKafka(t)
	var stdout, stderr bytes.Buffer
	code := runMain(context.Background(), []string{"bench", "--rooms=10", "--servers=3", "--events=500", "--timeout=2m",
		"--kafka.brokers=" + k.Addr, "--kafka.topic_prefix=" + k.Prefix, "--database.url=" + testenv.Database(t),
		"--data_dir=" + t.TempDir()}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("fedpipe bench exits %d:\n%s\n%s", code, stderr.String(), stdout.String())
	}
	t.Logf("stdout:\n%s", stdout.String())
	if !strings.Contains(stderr.String(), "backlog: relay") {
		t.Errorf("no progress line on stderr:\n%s", stderr.String())
	}
	rates := map[string]float64{}
	for _, line := range strings.Split(stdout.String(), "\n") {
		for _, stage := range []string{"end to end", "outbox insert", "relay", "router", "raw kafka-go", "txn build+sign", "HTTPS send"} {
			if rest, ok := strings.CutPrefix(line, stage+" "); ok {
				f := strings.Fields(rest)
				if len(f) < 3 {
					t.Errorf("table line %q: too few columns", line)
					continue
				}
				rates[stage], _ = strconv.ParseFloat(f[0], 64)
				if stage != "end to end" && !strings.HasSuffix(strings.TrimSuffix(rest, "  (slowest)"), "%") {
					t.Errorf("table line %q: no ratio", line)
				}
			}
		}
	}
	for _, stage := range []string{"end to end", "outbox insert", "relay", "router", "raw kafka-go", "txn build+sign", "HTTPS send"} {
		if rates[stage] <= 0 {
			t.Errorf("stage %q: rate %v in the table", stage, rates[stage])
		}
	}
	for _, want := range []string{"(slowest)", "latency commit → arrival  p50 ", "peak heap ", "peak RSS "} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("the table lacks %q", want)
		}
	}
	// Its topics and groups are gone.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	parts, err := readPartitions(ctx, k.Addr)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		if strings.HasPrefix(p.Topic, k.Prefix+"-bench-") && p.ID == 0 {
			t.Errorf("topic %s left behind", p.Topic)
		}
	}
	groups, err := (&kafka.Client{Addr: kafka.TCP(k.Addr)}).ListGroups(ctx, &kafka.ListGroupsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups.Groups {
		if strings.HasPrefix(g.GroupID, k.Prefix+"-bench-") {
			t.Errorf("group %s left behind", g.GroupID)
		}
	}
}
