package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	goruntime "runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/federation/client"
	"github.com/fedpipe/fedpipe/federation/discovery"
	"github.com/fedpipe/fedpipe/federation/signing"
	"github.com/fedpipe/fedpipe/federation/testreceiver"
	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/federation/xmatrix"
	"github.com/fedpipe/fedpipe/internal/config"
	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/testing/loadgen"
	"github.com/fedpipe/fedpipe/schema"
)

// The end-to-end measurement shared by `fedpipe bench` and BenchmarkEndToEnd:
// a generated load ingested into the outbox, through relay, router and sender
// to simulated remote servers on loopback HTTPS, every (event, server)
// delivery checked against the plan; then, in the same run and on the same
// broker and database, each stage alone (the baselines), so the stage that
// bounds the pipeline is named by a measurement.

// benchSize shapes one measurement.
type benchSize struct {
	rooms, servers, events int
	// rate paces ingest at this many events/s; 0 ingests as fast as
	// PostgreSQL takes them (latency then includes the backlog).
	rate int
	// slow is how many servers (the first ones) answer every transaction 30 s
	// late: the run waits for, checks and measures the others only.
	slow int
	// timeout bounds the wait for every delivery.
	timeout time.Duration
	// baselines runs each stage alone after the end-to-end run.
	baselines bool
}

// benchPDUsPerTxn is the transactions' size in the build+sign and send
// baselines: the most PDUs a transaction carries.
const benchPDUsPerTxn = txn.MaxPDUs

// benchRun is a deployment to measure: fedpipe's infrastructure (brokers,
// database, key; no stage running) and the simulated remote servers its
// configuration points at.
type benchRun struct {
	cfg  config.Config
	in   *infra
	recv *testreceiver.Server
	// progress receives a line per second while the pipeline runs and one
	// per baseline.
	progress io.Writer
}

// benchResult is what a measurement found.
type benchResult struct {
	Events, Deliveries, Duplicates, Servers int
	// Elapsed runs from the start of ingest to the last first arrival.
	Elapsed, Ingest time.Duration
	// Rate is distinct (event, server) deliveries per second.
	Rate float64
	// Transactions is how many transactions the sender sent.
	Transactions  float64
	P50, P90, P99 time.Duration
	// PeakHeap is the largest Go heap (runtime.MemStats.HeapAlloc) sampled
	// during the run; PeakRSS the process's peak resident set (VmHWM, the
	// whole process: with kfake and the receivers when in process), 0 where
	// /proc does not say.
	PeakHeap, PeakRSS uint64
	// Ages are how old records were when the router and the sender fetched
	// them: where the latency accrues.
	Ages []stageAge
	// CPU is what the end-to-end run cost in CPU, to the last delivery.
	CPU cpuUse
	// Baselines are the stages measured alone, in the order they ran.
	Baselines []stageRate
}

// stageRate is one stage measured alone.
type stageRate struct {
	Stage string
	// Count units of work (Unit) done in Elapsed.
	Count   int
	Unit    string
	Elapsed time.Duration
	// PerUnit is how many (event, server) deliveries one unit stands for,
	// so stages of different units compare with the end-to-end rate.
	PerUnit float64
}

// Rate is units per second.
func (s stageRate) Rate() float64 { return float64(s.Count) / s.Elapsed.Seconds() }

// Deliveries is the deliveries per second the stage alone would carry.
func (s stageRate) Deliveries() float64 { return s.Rate() * s.PerUnit }

// Slowest is the baseline that carries the fewest deliveries per second.
func (r benchResult) Slowest() (stageRate, bool) {
	if len(r.Baselines) == 0 {
		return stageRate{}, false
	}
	s := r.Baselines[0]
	for _, b := range r.Baselines[1:] {
		if b.Deliveries() < s.Deliveries() {
			s = b
		}
	}
	return s, true
}

// benchMember is a started set of stages with its own metrics registry, as
// another process would be.
type benchMember struct {
	reg    *prometheus.Registry
	cancel context.CancelFunc
	g      *errgroup.Group
	done   <-chan struct{} // closed when a stage fails (or stop is called)
}

// startMember starts stages on in with configuration cfg.
func startMember(ctx context.Context, in *infra, cfg config.Config, stages ...string) (*benchMember, error) {
	ctx, cancel := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(ctx)
	member := *in
	member.cfg = cfg
	member.reg = prometheus.NewRegistry()
	member.closers = nil
	if err := member.startStages(gctx, g, stages, nil); err != nil {
		cancel()
		return nil, errors.Join(err, g.Wait())
	}
	return &benchMember{reg: member.reg, cancel: cancel, g: g, done: gctx.Done()}, nil
}

// stop stops the member's stages and returns their error.
func (m *benchMember) stop() error {
	m.cancel()
	if err := m.g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// randomID is a short random hex string (run ids, topic prefixes).
func randomID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// plan generates the load: rooms among the receivers' servers, each with 4
// remote servers joined at first, PDUs padded to a realistic size, ids of a
// run of their own.
func (b *benchRun) plan(size benchSize) (*loadgen.Plan, error) {
	return loadgen.Generate(loadgen.Config{LocalServer: b.cfg.ServerName, RemoteServers: b.recv.Names(), Rooms: size.rooms, Events: size.events,
		ServersPerRoom: min(4, size.servers), Seed: 42, PDUPadding: 300, RunID: randomID()})
}

// run measures the pipeline end to end, then (size.baselines) each stage alone.
func (b *benchRun) run(ctx context.Context, size benchSize) (benchResult, error) {
	res, err := b.endToEnd(ctx, size)
	if err != nil || !size.baselines {
		return res, err
	}
	res.Baselines, err = b.baselines(ctx, size)
	return res, err
}

// endToEnd ingests a generated load into the outbox with relay, router and
// sender running, waits until every (event, server) delivery has arrived
// exactly as planned (a missing, unexpected, out-of-order or unknown one is an
// error; duplicates are counted), and measures deliveries per second and the
// latency from commit to first arrival.
func (b *benchRun) endToEnd(ctx context.Context, size benchSize) (benchResult, error) {
	isSlow := b.slowServers(size.slow)
	defer func() {
		for d := range isSlow {
			b.recv.ClearFault(d)
		}
	}()
	plan, err := b.plan(size)
	if err != nil {
		return benchResult{}, err
	}
	m, err := startMember(ctx, b.in, b.cfg, "relay", "router", "sender")
	if err != nil {
		return benchResult{}, err
	}
	defer m.stop()
	start, cpu0 := time.Now(), sampleCPU()
	var peakHeap atomic.Uint64
	stopSampling := b.sampleBacklogs(ctx, m, start, &peakHeap)
	defer stopSampling()
	persist, batch := loadgen.PoolPersister(b.in.pool), 500
	if size.rate > 0 {
		// Paced, events commit in batches of 10 ms of the rate, as a
		// homeserver's commit one after another: a burst of 500 every half
		// second would measure the burst, not the pipeline.
		persist, batch = paced(persist, size.rate), max(1, size.rate/100)
	}
	committed, err := plan.Ingest(ctx, persist, batch, nil)
	if err != nil {
		return benchResult{}, err
	}
	ingested := time.Since(start)
	report, err := b.awaitDeliveries(ctx, m, plan, isSlow, size.timeout)
	if err != nil {
		return benchResult{}, err
	}
	cpu := cpu0.until(sampleCPU())
	stopSampling()
	if err := m.stop(); err != nil {
		return benchResult{}, err
	}
	if !report.OK() {
		report.Print(b.progress)
		t := report.Totals()
		return benchResult{}, fmt.Errorf("deliveries differ from the plan: %d missing, %d unexpected, %d out of order, %d unknown", t.Missing, t.Unexpected, t.OutOfOrder, t.Unknown)
	}
	lat, last := b.latencies(plan, isSlow, committed)
	if len(lat) == 0 {
		return benchResult{}, errors.New("no delivery to a healthy server to measure")
	}
	// The run ends at the last first arrival, not when the check noticed.
	elapsed := last.Sub(start)
	pct := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	res := benchResult{Events: len(plan.Events), Deliveries: plan.Expected, Duplicates: report.Totals().Duplicates, Servers: size.servers,
		Elapsed: elapsed, Ingest: ingested, Rate: float64(plan.Expected) / elapsed.Seconds(),
		Transactions: metricSum(m.reg, "fedpipe_sender_transactions_total"),
		P50:          pct(0.5), P90: pct(0.9), P99: pct(0.99), PeakHeap: max(peakHeap.Load(), heapAlloc()), PeakRSS: peakRSS(),
		Ages: recordAges(m.reg, b.cfg.Kafka.TopicPrefix), CPU: cpu}
	fmt.Fprintf(b.progress, "end to end: %d events, %d distinct deliveries (%d duplicates) to %d servers in %s (ingest %s): %.0f deliveries/s, latency p50 %s p90 %s p99 %s\n",
		res.Events, res.Deliveries, res.Duplicates, res.Servers, elapsed.Round(time.Millisecond), ingested.Round(time.Millisecond), res.Rate,
		res.P50.Round(time.Millisecond), res.P90.Round(time.Millisecond), res.P99.Round(time.Millisecond))
	b.recv.Reset() // what arrived is measured; the send baseline starts empty
	return res, nil
}

// slowServers makes the first n receivers answer every transaction 30 s late
// and returns them; the caller clears their faults.
func (b *benchRun) slowServers(n int) map[string]bool {
	isSlow := map[string]bool{}
	for _, d := range b.recv.Names()[:n] {
		isSlow[d] = true
		b.recv.SetFault(d, testreceiver.Fault{Delay: 30 * time.Second})
	}
	return isSlow
}

// awaitDeliveries waits until every delivery of plan to a server not in
// isSlow has arrived (what the slow servers get is not waited for), and
// returns the check of what arrived. It fails when ctx ends, a stage of m
// stops or timeout passes first.
func (b *benchRun) awaitDeliveries(ctx context.Context, m *benchMember, plan *loadgen.Plan, isSlow map[string]bool, timeout time.Duration) (loadgen.Report, error) {
	healthy := func(dest string) []json.RawMessage {
		if isSlow[dest] {
			return plan.ExpectedPDUs(dest)
		}
		return b.recv.PDUs(dest)
	}
	// The full check parses every PDU, and copying the receivers' PDUs
	// holds their lock: run every 10 ms, it took a fifth of the CPU from the
	// pipeline it measures. Count first, without copying.
	arrived := func() int {
		n := b.recv.TotalPDUs()
		for d := range isSlow {
			n += len(plan.ExpectedPDUs(d)) - len(b.recv.PDUs(d))
		}
		return n
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return loadgen.Report{}, ctx.Err()
		case <-m.done:
			return loadgen.Report{}, fmt.Errorf("a stage stopped during the run: %w", m.stop())
		case <-deadline.C:
			report := plan.Check(healthy, -1)
			report.Print(b.progress)
			return loadgen.Report{}, fmt.Errorf("%d of %d deliveries after %s", report.Totals().Delivered, plan.Expected, timeout)
		case <-tick.C:
			if arrived() >= plan.Expected {
				if report := plan.Check(healthy, -1); report.Totals().Delivered == plan.Expected {
					return report, nil
				}
			}
		}
	}
}

// latencies returns, sorted, the time from commit to first arrival of each
// (event, server) delivery to a server not in isSlow, and the last of those
// first arrivals.
func (b *benchRun) latencies(plan *loadgen.Plan, isSlow map[string]bool, committed []time.Time) ([]time.Duration, time.Time) {
	var lat []time.Duration
	var last time.Time
	for _, dest := range b.recv.Names() {
		if isSlow[dest] {
			continue
		}
		pdus, at := b.recv.PDUArrivals(dest)
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
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat, last
}

// sampleBacklogs prints, every second until stop is called, what waits at each
// stage: events committed but not published by the relay, room records the
// router group has not committed, outbound records the sender group has not
// committed, and PDUs arrived; then what each stage has done so far, from the
// member's own counters. The stage whose backlog grows is the one that bounds
// the run. It also samples the heap into peak.
func (b *benchRun) sampleBacklogs(ctx context.Context, m *benchMember, start time.Time, peak *atomic.Uint64) (stop func()) {
	prefix, broker := b.cfg.Kafka.TopicPrefix, b.in.brokers[0]
	sample := func(ctx context.Context) string {
		at := time.Since(start).Seconds()
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		var relay int64
		err := b.in.pool.QueryRow(qctx, `SELECT (SELECT last_value FROM events_stream_seq) -
			COALESCE((SELECT position FROM relay_positions WHERE stream = 'events'), 0)`).Scan(&relay)
		router, rerr := groupLag(broker, groupID(prefix, routerGroup), schema.Topic(prefix, "room"))
		sender, serr := groupLag(broker, groupID(prefix, senderGroup), schema.Topic(prefix, "outbound"))
		if err = errors.Join(err, rerr, serr); err != nil {
			return fmt.Sprintf("%5.1fs  (%v)", at, err) // shown, not fatal: the run goes on
		}
		return fmt.Sprintf("%5.1fs  backlog: relay %7d  router %7d  sender %7d  |  arrived %8d  routed %7.0f  outbound %7.0f  txns %6.0f  heap %s",
			at, relay, router, sender, b.recv.TotalPDUs(), metricSum(m.reg, "fedpipe_router_records_total"),
			metricSum(m.reg, "fedpipe_batchwriter_records_written_total"), metricSum(m.reg, "fedpipe_sender_transactions_total"), mib(peak.Load()))
	}
	fmt.Fprintln(b.progress, "every second: backlogs (events not published; room and outbound records not committed) and totals (PDUs arrived, room records routed, outbound records written, transactions sent; peak heap)")
	ctx, cancel := context.WithCancel(ctx)
	var sampler errgroup.Group // waited for by stop
	sampler.Go(func() error {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
				peak.Store(max(peak.Load(), heapAlloc()))
				fmt.Fprintln(b.progress, sample(ctx))
			}
		}
	})
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			_ = sampler.Wait() // the loop returns only nil
			peak.Store(max(peak.Load(), heapAlloc()))
			fmt.Fprintln(b.progress, sample(context.Background())) // at least one line, however short the run
		})
	}
}

// baselines measures each stage alone, one after another, on the same
// broker and database: the outbox insert of a second plan like the first (its
// own rooms and event ids), the relay publishing those events, the router
// routing them from the pre-filled room topic, raw kafka-go produce+consume of
// one record per (event, server), building and signing 50-PDU transactions,
// and sending them to the receivers over loopback HTTPS. Topics are those of a
// prefix of their own, so the end-to-end run's groups and records are not
// involved; nothing else runs meanwhile.
func (b *benchRun) baselines(ctx context.Context, size benchSize) ([]stageRate, error) {
	plan, err := b.plan(size)
	if err != nil {
		return nil, err
	}
	cfg := b.cfg
	cfg.Kafka.TopicPrefix = b.cfg.Kafka.TopicPrefix + "-baseline"
	if err := kafkaio.CreateTopics(ctx, b.in.brokers, topicsConfig(cfg), b.in.log); err != nil {
		return nil, fmt.Errorf("creating the baselines' topics: %w", err)
	}
	var out []stageRate
	report := func(s stageRate) {
		out = append(out, s)
		fmt.Fprintf(b.progress, "baseline %-15s %8d %-13s in %8s: %10.0f %s/s (%.0f deliveries/s)\n",
			s.Stage, s.Count, s.Unit, s.Elapsed.Round(time.Millisecond), s.Rate(), s.Unit, s.Deliveries())
	}
	// The outbox, the relay and the router in the pipeline's order: each
	// reads what the one before it left.
	outbox, err := b.outboxBaseline(ctx, plan)
	if err != nil {
		return nil, err
	}
	report(outbox)
	relayed, err := b.relayBaseline(ctx, cfg, plan, size.timeout)
	if err != nil {
		return nil, err
	}
	report(relayed)
	routed, err := b.routerBaseline(ctx, cfg, plan, size.timeout)
	if err != nil {
		return nil, err
	}
	report(routed)

	// Raw kafka-go produce+consume of one record per (event, server).
	raw, err := rawKafka(ctx, b.in.brokers, cfg, plan)
	if err != nil {
		return nil, fmt.Errorf("raw kafka-go baseline: %w", err)
	}
	report(raw)

	// Transactions of 50 PDUs built and signed, as many as the deliveries need.
	txns := max(plan.Expected/benchPDUsPerTxn, 100)
	build, err := buildSign(ctx, b.cfg.ServerName, b.recv.Names(), b.in.key, plan, txns)
	if err != nil {
		return nil, fmt.Errorf("transaction build+sign baseline: %w", err)
	}
	report(build)

	send, err := b.send(ctx, plan, txns)
	if err != nil {
		return nil, fmt.Errorf("HTTPS send baseline: %w", err)
	}
	report(send)
	return out, nil
}

// perEvent is how many (event, server) deliveries one event of plan stands for.
func perEvent(plan *loadgen.Plan) float64 {
	return float64(plan.Expected) / float64(len(plan.Events))
}

// outboxBaseline inserts plan's events into PostgreSQL, nothing reading them.
func (b *benchRun) outboxBaseline(ctx context.Context, plan *loadgen.Plan) (stageRate, error) {
	start := time.Now()
	if _, err := plan.Ingest(ctx, loadgen.PoolPersister(b.in.pool), 500, nil); err != nil {
		return stageRate{}, fmt.Errorf("outbox insert baseline: %w", err)
	}
	return stageRate{Stage: "outbox insert", Count: len(plan.Events), Unit: "events", Elapsed: time.Since(start), PerUnit: perEvent(plan)}, nil
}

// relayBaseline runs the relay alone until it has published the events
// outboxBaseline inserted (after the end-to-end run's, already published)
// to the room topic of cfg's prefix.
func (b *benchRun) relayBaseline(ctx context.Context, cfg config.Config, plan *loadgen.Plan, timeout time.Duration) (stageRate, error) {
	var last int64
	if err := b.in.pool.QueryRow(ctx, `SELECT last_value FROM events_stream_seq`).Scan(&last); err != nil {
		return stageRate{}, fmt.Errorf("relay baseline: %w", err)
	}
	start := time.Now()
	m, err := startMember(ctx, b.in, cfg, "relay")
	if err != nil {
		return stageRate{}, fmt.Errorf("relay baseline: %w", err)
	}
	err = pollUntil(ctx, m, timeout, 5*time.Millisecond, func(ctx context.Context) (bool, error) {
		var pos int64
		err := b.in.pool.QueryRow(ctx, `SELECT COALESCE((SELECT position FROM relay_positions WHERE stream = 'events'), 0)`).Scan(&pos)
		return pos >= last, err
	})
	elapsed := time.Since(start)
	if err = errors.Join(err, m.stop()); err != nil {
		return stageRate{}, fmt.Errorf("relay baseline: %w", err)
	}
	return stageRate{Stage: "relay", Count: len(plan.Events), Unit: "events", Elapsed: elapsed, PerUnit: perEvent(plan)}, nil
}

// routerBaseline runs the router alone from the room topic relayBaseline
// filled to the outbound topic, timed from the group's first commit
// (joining the group is not routing).
func (b *benchRun) routerBaseline(ctx context.Context, cfg config.Config, plan *loadgen.Plan, timeout time.Duration) (stageRate, error) {
	broker, group, room := b.in.brokers[0], groupID(cfg.Kafka.TopicPrefix, routerGroup), schema.Topic(cfg.Kafka.TopicPrefix, "room")
	total, err := groupLag(broker, group, room)
	if err != nil {
		return stageRate{}, fmt.Errorf("router baseline: %w", err)
	}
	m, err := startMember(ctx, b.in, cfg, "router")
	if err != nil {
		return stageRate{}, fmt.Errorf("router baseline: %w", err)
	}
	start := time.Now()
	err = pollUntil(ctx, m, timeout, 5*time.Millisecond, func(context.Context) (bool, error) {
		sampled := time.Now()
		lag, err := groupLag(broker, group, room)
		if err != nil {
			return false, err
		}
		if lag == total { // nothing committed yet: the clock starts at the last sample before the first commit
			start = sampled
		}
		return lag == 0, nil
	})
	elapsed := time.Since(start)
	if err = errors.Join(err, m.stop()); err != nil {
		return stageRate{}, fmt.Errorf("router baseline: %w", err)
	}
	return stageRate{Stage: "router", Count: int(total), Unit: "room records", Elapsed: elapsed, PerUnit: float64(plan.Expected) / float64(total)}, nil
}

// pollUntil calls cond every interval until it holds, the member's stages
// fail, ctx ends or timeout passes.
func pollUntil(ctx context.Context, m *benchMember, timeout, interval time.Duration, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		ok, err := cond(ctx)
		if err != nil && ctx.Err() == nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not done after %s: %w", timeout, ctx.Err())
		case <-m.done:
			return fmt.Errorf("a stage stopped: %w", m.stop())
		case <-tick.C:
		}
	}
}

// rawKafka produces one record per (event, server) with the PDU as value
// and consumes them back through a consumer group: records per second for
// both together, through the same broker, with fedpipe's writer settings.
func rawKafka(ctx context.Context, brokers []string, cfg config.Config, plan *loadgen.Plan) (stageRate, error) {
	topic := schema.Topic(cfg.Kafka.TopicPrefix, "raw")
	c := &kafka.Client{Addr: kafka.TCP(brokers...)}
	resp, err := c.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: topic, NumPartitions: cfg.Kafka.OutboundPartitions, ReplicationFactor: cfg.Kafka.ReplicationFactor}}})
	if err != nil {
		return stageRate{}, err
	}
	if err := resp.Errors[topic]; err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
		return stageRate{}, fmt.Errorf("creating %s: %w", topic, err)
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
			return stageRate{}, err
		}
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, GroupTopics: []string{topic}, GroupID: topic + "-" + randomID(), StartOffset: kafka.FirstOffset, MaxWait: 50 * time.Millisecond, MaxBytes: 10 << 20})
	defer r.Close()
	for n := 0; n < len(msgs); n++ {
		if _, err := r.FetchMessage(ctx); err != nil {
			return stageRate{}, err
		}
	}
	return stageRate{Stage: "raw kafka-go", Count: len(msgs), Unit: "records", Elapsed: time.Since(start), PerUnit: 1}, nil
}

// benchTxn is the i-th 50-PDU transaction of the baselines: the plan's PDUs
// taken in turn, to the servers in turn.
func benchTxn(origin, run string, servers []string, plan *loadgen.Plan, i int) (*txn.Transaction, error) {
	t := &txn.Transaction{ID: fmt.Sprintf("bench-%s-%d", run, i), Origin: origin, Destination: servers[i%len(servers)], OriginServerTS: time.Now().UnixMilli()}
	for j := range benchPDUsPerTxn {
		if err := t.AddPDU(plan.Events[(i*benchPDUsPerTxn+j)%len(plan.Events)].PDU); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// buildSign builds n transactions of 50 of the plan's PDUs, encodes their
// bodies and signs their requests (what the sender does for each
// transaction), on as many goroutines as there are cores.
func buildSign(ctx context.Context, origin string, servers []string, k *signing.Key, plan *loadgen.Plan, n int) (stageRate, error) {
	var next atomic.Int64
	g, ctx := errgroup.WithContext(ctx)
	start := time.Now()
	for range goruntime.GOMAXPROCS(0) {
		g.Go(func() error {
			for i := int(next.Add(1) - 1); i < n && ctx.Err() == nil; i = int(next.Add(1) - 1) {
				t, err := benchTxn(origin, "build", servers, plan, i)
				if err != nil {
					return err
				}
				_, canonical, err := t.Encode()
				if err != nil {
					return err
				}
				if _, err := xmatrix.AuthorizationCanonical(t.Origin, t.Destination, k, "PUT", t.Path(), canonical); err != nil {
					return err
				}
			}
			return ctx.Err()
		})
	}
	if err := g.Wait(); err != nil {
		return stageRate{}, err
	}
	return stageRate{Stage: "txn build+sign", Count: n, Unit: "transactions", Elapsed: time.Since(start), PerUnit: benchPDUsPerTxn}, nil
}

// send sends n transactions of 50 PDUs to the receivers through the
// federation client as the sender builds it (discovery, TLS verified against
// the receivers' CA): every server at once, one transaction in flight per
// server.
func (b *benchRun) send(ctx context.Context, plan *loadgen.Plan, n int) (stageRate, error) {
	cfg := b.cfg
	ccfg := client.Config{Origin: cfg.ServerName, CAFile: cfg.Federation.CAFile, InsecureSkipVerify: cfg.Federation.InsecureSkipVerify,
		AllowedNetworks: cfg.Federation.AllowedNetworks, RequestTimeout: cfg.Federation.RequestTimeout}
	res, err := discovery.New(discovery.Config{Static: cfg.Federation.Static})
	if err != nil {
		return stageRate{}, err
	}
	cl, err := client.New(ccfg, b.in.key, res, b.in.log)
	if err != nil {
		return stageRate{}, err
	}
	defer cl.Close()
	defer b.recv.Reset()
	servers := b.recv.Names()
	run := randomID()
	g, ctx := errgroup.WithContext(ctx)
	start := time.Now()
	for s := range servers {
		g.Go(func() error {
			for i := s; i < n; i += len(servers) { // transaction i goes to servers[i%len(servers)]
				t, err := benchTxn(cfg.ServerName, run, servers, plan, i)
				if err != nil {
					return err
				}
				if _, err := cl.SendTransaction(ctx, t); err != nil {
					return fmt.Errorf("sending %s to %s: %w", t.ID, t.Destination, err)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return stageRate{}, err
	}
	elapsed := time.Since(start)
	if got := b.recv.TotalPDUs(); got != n*benchPDUsPerTxn {
		return stageRate{}, fmt.Errorf("the receivers accepted %d PDUs of the %d sent", got, n*benchPDUsPerTxn)
	}
	return stageRate{Stage: "HTTPS send", Count: n, Unit: "transactions", Elapsed: elapsed, PerUnit: benchPDUsPerTxn}, nil
}

// paced wraps a persister so that batches are persisted at rate events/s.
func paced(next loadgen.Persister, rate int) loadgen.Persister {
	start, sent := time.Now(), 0
	return func(ctx context.Context, batch []loadgen.Event) error {
		due := start.Add(time.Duration(float64(sent) / float64(rate) * float64(time.Second)))
		select {
		case <-time.After(time.Until(due)):
		case <-ctx.Done():
			return ctx.Err()
		}
		sent += len(batch)
		return next(ctx, batch)
	}
}

// printBenchTable writes the result as tables: every stage's rate, what it
// stands for in deliveries per second, and fedpipe's end-to-end rate as a
// share of it; latency and memory.
func printBenchTable(w io.Writer, r benchResult) {
	fmt.Fprintf(w, "\n%d events, %d (event, server) deliveries to %d servers, %d duplicates, in %s (ingest %s)\n\n",
		r.Events, r.Deliveries, r.Servers, r.Duplicates, r.Elapsed.Round(time.Millisecond), r.Ingest.Round(time.Millisecond))
	fmt.Fprintf(w, "%-15s %12s  %-15s %14s  %s\n", "stage", "rate", "unit", "deliveries/s", "end-to-end / stage")
	fmt.Fprintf(w, "%-15s %12.0f  %-15s %14.0f  %s\n", "end to end", r.Rate, "deliveries/s", r.Rate, "")
	slowest, _ := r.Slowest()
	for _, s := range r.Baselines {
		mark := ""
		if s.Stage == slowest.Stage {
			mark = "  (slowest)"
		}
		fmt.Fprintf(w, "%-15s %12.0f  %-15s %14.0f  %5.1f%%%s\n", s.Stage, s.Rate(), s.Unit+"/s", s.Deliveries(), 100*r.Rate/s.Deliveries(), mark)
	}
	ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	fmt.Fprintf(w, "\nlatency commit → arrival  p50 %s  p90 %s  p99 %s\n", ms(r.P50), ms(r.P90), ms(r.P99))
	for _, a := range r.Ages {
		fmt.Fprintf(w, "  record age at %-14s  p50 ≤ %s  p90 ≤ %s  p99 ≤ %s\n", a.Stage, ms(a.P50), ms(a.P90), ms(a.P99))
	}
	if r.CPU.Process > 0 {
		per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(max(1, r.Deliveries)) }
		fmt.Fprintf(w, "CPU                       process %s (%.0f µs/delivery)  PostgreSQL %s (%.0f µs/delivery)  machine %.0f%% busy\n",
			r.CPU.Process.Round(10*time.Millisecond), per(r.CPU.Process), r.CPU.Postgres.Round(10*time.Millisecond), per(r.CPU.Postgres), 100*r.CPU.Busy)
	}
	fmt.Fprintf(w, "memory                    peak heap %s  peak RSS %s\n", mib(r.PeakHeap), mib(r.PeakRSS))
}

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func heapAlloc() uint64 {
	var ms goruntime.MemStats
	goruntime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// peakRSS is the process's peak resident set size (VmHWM), 0 where /proc
// does not say.
func peakRSS() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// stageAge is how old records were when a stage's group fetched them (the
// fedpipe_consumer_record_age_seconds histogram): the latency up to that stage.
type stageAge struct {
	Stage         string
	P50, P90, P99 time.Duration
}

// recordAges reads the record-age histograms of the router (room topic) and
// the sender (outbound topic) from reg. The quantiles are the upper bounds of
// the histogram's buckets (powers of two from 1 ms), so they say which power
// of two a stage's latency is within, not more.
func recordAges(reg prometheus.Gatherer, prefix string) []stageAge {
	var ages []stageAge
	for _, s := range []struct{ stage, group, topic string }{
		{"router", routerGroup, "room"},
		{"sender", senderGroup, "outbound"},
	} {
		h := histogram(reg, "fedpipe_consumer_record_age_seconds", map[string]string{"group": groupID(prefix, s.group), "topic": schema.Topic(prefix, s.topic)})
		if h == nil || h.GetSampleCount() == 0 {
			continue
		}
		q := func(q float64) time.Duration {
			want := q * float64(h.GetSampleCount())
			for _, b := range h.GetBucket() {
				if float64(b.GetCumulativeCount()) >= want {
					return time.Duration(b.GetUpperBound() * float64(time.Second))
				}
			}
			return -1
		}
		ages = append(ages, stageAge{Stage: s.stage, P50: q(0.5), P90: q(0.9), P99: q(0.99)})
	}
	return ages
}

// histogram returns the histogram series of name in reg with labels, nil when
// there is none.
func histogram(reg prometheus.Gatherer, name string, labels map[string]string) *dto.Histogram {
	mfs, err := reg.Gather()
	if err != nil {
		return nil
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue series
				}
			}
			return m.GetHistogram()
		}
	}
	return nil
}

// metricSum sums a counter's series in reg (0 when it has none).
func metricSum(reg prometheus.Gatherer, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}

// groupLag is how many records of topics group has not committed past (from
// the start of a partition it committed nothing of).
func groupLag(broker, group string, topics ...string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := kafka.DialContext(ctx, "tcp", broker)
	if err != nil {
		return 0, err
	}
	deadline, _ := ctx.Deadline()
	if err := conn.SetDeadline(deadline); err != nil {
		conn.Close()
		return 0, err
	}
	parts, err := conn.ReadPartitions(topics...)
	conn.Close()
	if err != nil {
		return 0, err
	}
	reqs := map[string][]kafka.OffsetRequest{}
	ids := map[string][]int{}
	for _, p := range parts {
		reqs[p.Topic] = append(reqs[p.Topic], kafka.LastOffsetOf(p.ID))
		ids[p.Topic] = append(ids[p.Topic], p.ID)
	}
	client := &kafka.Client{Addr: kafka.TCP(broker)}
	lo, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: reqs})
	if err != nil {
		return 0, err
	}
	of, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: ids})
	if err != nil {
		return 0, err
	}
	var lag int64
	for topic, ps := range lo.Topics {
		committed := map[int]int64{}
		for _, p := range of.Topics[topic] {
			if p.Error == nil {
				committed[p.Partition] = max(p.CommittedOffset, 0)
			}
		}
		for _, p := range ps {
			if p.Error != nil {
				return 0, p.Error
			}
			lag += max(p.LastOffset-committed[p.Partition], 0)
		}
	}
	return lag, nil
}
