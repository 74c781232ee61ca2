package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/federation/testreceiver"
	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/loadgen"
	"github.com/fedpipe/fedpipe/internal/testenv"
	"github.com/fedpipe/fedpipe/schema"
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
// (scripts/ensure-postgres) and loopback HTTPS, then raw kafka-go produce and consume of the same bytes
// through the same broker. FEDPIPE_BENCH_ROOMS/SERVERS/EVENTS scale it down.
// By default events are ingested as fast as PostgreSQL takes them, so latency
// includes the backlog; FEDPIPE_BENCH_RATE=N paces ingest at N events/s to
// measure latency below saturation.
//
//	go test -run '^$' -bench EndToEnd -benchtime 1x -timeout 30m ./cmd/fedpipe
func BenchmarkEndToEnd(b *testing.B) {
	rooms, servers, events := envInt("FEDPIPE_BENCH_ROOMS", 1000), envInt("FEDPIPE_BENCH_SERVERS", 50), envInt("FEDPIPE_BENCH_EVENTS", 100000)
	for i := 0; i < b.N; i++ {
		r := endToEnd(b, rooms, servers, events, envInt("FEDPIPE_BENCH_RATE", 0), 0)
		b.ReportMetric(r.rate, "deliveries/s")
		b.ReportMetric(float64(r.p50.Milliseconds()), "p50-ms")
		b.ReportMetric(float64(r.p99.Milliseconds()), "p99-ms")
		raw := rawKafka(b, r.brokers, r.plan)
		b.ReportMetric(raw, "raw-records/s")
		b.ReportMetric(r.rate/raw, "fedpipe/raw")
		b.Logf("raw kafka-go produce+consume of the same %d records: %.0f records/s; fedpipe reaches %.1f%% of it", r.plan.Expected, raw, 100*r.rate/raw)
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
	rooms, servers, events, rate := envInt("FEDPIPE_BENCH_ROOMS", 200), envInt("FEDPIPE_BENCH_SERVERS", 50), envInt("FEDPIPE_BENCH_EVENTS", 20000), envInt("FEDPIPE_BENCH_RATE", 1000)
	for i := 0; i < b.N; i++ {
		base := endToEnd(b, rooms, servers, events, rate, 0)
		slow := endToEnd(b, rooms, servers, events, rate, servers/10)
		b.ReportMetric(float64(base.p99.Milliseconds()), "p99-ms-all-healthy")
		b.ReportMetric(float64(slow.p99.Milliseconds()), "p99-ms-healthy-beside-slow")
		b.ReportMetric(float64(slow.p99)/float64(base.p99), "p99-ratio")
		if slow.p99 > base.p99*6/5 {
			b.Errorf("healthy servers' p99 %s beside 10%% slow ones, %s without: more than 20%% worse", slow.p99, base.p99)
		}
	}
}

// The end-to-end benchmark's run and checks, at a small size, in every test
// run: a benchmark whose correctness checks never run checks nothing.
func TestEndToEndBenchmarkChecksAtSmallSize(t *testing.T) {
	r := endToEnd(t, 20, 5, 2000, 0, 0)
	if r.rate <= 0 || r.p99 <= 0 {
		t.Fatalf("no figures: %+v", r)
	}
}

type endToEndResult struct {
	plan     *loadgen.Plan
	brokers  []string
	rate     float64
	p50, p99 time.Duration
}

// endToEnd ingests a generated load into a fresh pipeline, waits until every
// (event, server) delivery has arrived exactly as planned (distinct deliveries;
// a missing, unexpected, out-of-order or unknown one fails), and measures
// deliveries per second and the latency from commit to first arrival. The
// first slow servers answer every transaction 30 s late: the run then waits
// for, checks and measures the others only.
func endToEnd(tb testing.TB, rooms, servers, events, rate, slow int) endToEndResult {
	tb.Helper()
	b, isBench := tb.(*testing.B)
	p := newPipeline(tb, remotes(servers))
	isSlow := map[string]bool{}
	for _, d := range remotes(servers)[:slow] {
		isSlow[d] = true
		p.recv.SetFault(d, testreceiver.Fault{Delay: 30 * time.Second})
	}
	plan, err := loadgen.Generate(loadgen.Config{LocalServer: "local.test", RemoteServers: p.recv.Names(), Rooms: rooms, Events: events, ServersPerRoom: 4, Seed: 42, PDUPadding: 300})
	if err != nil {
		tb.Fatal(err)
	}
	p.start("relay", "router", "sender")
	if isBench {
		b.ResetTimer()
	}
	start := time.Now()
	stopSampling := sampleBacklogs(tb, p, start)
	defer stopSampling()
	persist := loadgen.PoolPersister(p.in.pool)
	if rate > 0 {
		persist = paced(persist, rate)
	}
	committed, err := plan.Ingest(context.Background(), persist, 500, nil)
	if err != nil {
		tb.Fatal(err)
	}
	ingested := time.Since(start)
	var last time.Time
	var report loadgen.Report
	healthy := func(dest string) []json.RawMessage { // what the slow servers get is not waited for
		if isSlow[dest] {
			return plan.ExpectedPDUs(dest)
		}
		return p.recv.PDUs(dest)
	}
	// The full check parses every PDU, and copying the receivers' PDUs
	// holds their lock: run every 10 ms, it took a fifth of the CPU from the
	// pipeline it measures. Count first, without copying.
	arrived := func() int {
		n := p.recv.TotalPDUs()
		for d := range isSlow {
			n += len(plan.ExpectedPDUs(d)) - len(p.recv.PDUs(d))
		}
		return n
	}
	testenv.Eventually(tb, 30*time.Minute, "every delivery", func() bool {
		if arrived() < plan.Expected {
			return false
		}
		report = plan.Check(healthy, -1)
		return report.Totals().Delivered == plan.Expected
	})
	if isBench {
		b.StopTimer()
	}
	if !report.OK() {
		report.Print(testWriter{tb})
		tb.Fatal("deliveries differ from the plan")
	}
	// Latency: first arrival of each (event, destination) minus its commit time.
	var lat []time.Duration
	for _, dest := range p.recv.Names() {
		if isSlow[dest] {
			continue
		}
		pdus, at := p.recv.PDUArrivals(dest)
		seen := map[int]bool{}
		for j, pdu := range pdus {
			seq, ok := plan.SeqOf(pdu)
			if !ok || seen[seq] {
				continue
			}
			seen[seq] = true
			lat = append(lat, at[j].Sub(committed[seq]))
			if at[j].After(last) {
				last = at[j]
			}
		}
	}
	// The run ends at the last first arrival, not when the check noticed.
	elapsed := last.Sub(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	r := endToEndResult{plan: plan, brokers: p.cfg.Kafka.Brokers, rate: float64(plan.Expected) / elapsed.Seconds(), p50: pct(0.5), p99: pct(0.99)}
	tb.Logf("%d events, %d distinct deliveries (%d duplicates) to %d servers in %s (ingest %s): %.0f deliveries/s, latency p50 %s p99 %s",
		len(plan.Events), plan.Expected, report.Totals().Duplicates, servers, elapsed.Round(time.Millisecond), ingested.Round(time.Millisecond), r.rate, r.p50, r.p99)
	return r
}

// sampleBacklogs prints, every second until stop is called, what waits at each
// stage: events committed but not published by the relay, room records the
// router group has not committed, outbound records the sender group has not
// committed, and PDUs arrived: the stage whose backlog grows is the one that
// bounds the run.
func sampleBacklogs(tb testing.TB, p *pipeline, start time.Time) (stop func()) {
	prefix, broker := p.cfg.Kafka.TopicPrefix, p.cfg.Kafka.Brokers[0]
	var lines []string
	sample := func(ctx context.Context) string {
		at := time.Since(start).Seconds()
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		var relay int64
		err := p.in.pool.QueryRow(qctx, `SELECT (SELECT last_value FROM events_stream_seq) -
			COALESCE((SELECT position FROM relay_positions WHERE stream = 'events'), 0)`).Scan(&relay)
		router, rerr := groupLag(broker, groupID(prefix, routerGroup), schema.Topic(prefix, "room"))
		sender, serr := groupLag(broker, groupID(prefix, senderGroup), schema.Topic(prefix, "outbound"))
		if err = errors.Join(err, rerr, serr); err != nil {
			return fmt.Sprintf("%5.1fs  (%v)", at, err) // shown, not fatal: the run goes on
		}
		// What each stage has done so far, from the members' own counters.
		var routed, written, txns float64
		for _, reg := range p.regs {
			routed += counterSum(tb, reg, "fedpipe_router_records_total")
			written += counterSum(tb, reg, "fedpipe_batchwriter_records_written_total")
			txns += counterSum(tb, reg, "fedpipe_sender_transactions_total")
		}
		return fmt.Sprintf("%5.1fs  relay %7d  router %7d  sender %7d  arrived %8d  routed %7.0f  outbound %7.0f  txns %6.0f",
			at, relay, router, sender, p.recv.TotalPDUs(), routed, written, txns)
	}
	stopSampler := testenv.Background(tb, "backlog sampler", func(ctx context.Context) error {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
				lines = append(lines, sample(ctx))
			}
		}
	})
	return func() {
		if err := stopSampler(); err != nil {
			tb.Error(err)
		}
		// On stderr: the testing package cuts a benchmark's log short.
		fmt.Fprintf(os.Stderr, "backlogs (events not published; room and outbound records not committed; PDUs arrived) and totals (room records routed, outbound records written, transactions sent):\n%s\n", strings.Join(lines, "\n"))
	}
}

// paced wraps a persister so that batches are persisted at rate events/s.
func paced(next loadgen.Persister, rate int) loadgen.Persister {
	start, sent := time.Now(), 0
	return func(ctx context.Context, batch []loadgen.Event) error {
		due := start.Add(time.Duration(float64(sent) / float64(rate) * float64(time.Second)))
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		sent += len(batch)
		return next(ctx, batch)
	}
}

// rawKafka produces one record per (event, destination) with the PDU as value
// and consumes them back, returning records per second for both together.
func rawKafka(b *testing.B, brokers []string, plan *loadgen.Plan) float64 {
	ctx := context.Background()
	topic := "bench.raw"
	c := &kafka.Client{Addr: kafka.TCP(brokers...)}
	if _, err := c.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: topic, NumPartitions: 8, ReplicationFactor: 1}}}); err != nil {
		b.Fatal(err)
	}
	w := kafkaio.NewWriter(brokers, topic)
	defer w.Close()
	var msgs []kafka.Message
	for _, ev := range plan.Events {
		for _, d := range ev.Destinations {
			msgs = append(msgs, kafka.Message{Key: []byte(d), Value: ev.PDU})
		}
	}
	start := time.Now()
	for i := 0; i < len(msgs); i += 2000 {
		if err := w.WriteMessages(ctx, msgs[i:min(i+2000, len(msgs))]...); err != nil {
			b.Fatal(err)
		}
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, GroupTopics: []string{topic}, GroupID: fmt.Sprintf("bench-%d", time.Now().UnixNano()), StartOffset: kafka.FirstOffset, MaxWait: 50 * time.Millisecond, MaxBytes: 10 << 20})
	defer r.Close()
	for n := 0; n < len(msgs); n++ {
		if _, err := r.FetchMessage(ctx); err != nil {
			b.Fatal(err)
		}
	}
	return float64(len(msgs)) / time.Since(start).Seconds()
}
