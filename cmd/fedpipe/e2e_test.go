package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/federation/signing"
	"github.com/fedpipe/fedpipe/federation/testreceiver"
	"github.com/fedpipe/fedpipe/internal/config"
	"github.com/fedpipe/fedpipe/internal/testing/loadgen"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

// pipeline is a test deployment: a Kafka broker over TCP (kfake, or the Apache
// Kafka of FEDPIPE_TEST_KAFKA_BROKERS under a topic prefix of its own), a fresh PostgreSQL
// database, simulated remote servers, and fedpipe's configuration for them.
type pipeline struct {
	t    testing.TB
	k    *testenv.Kafka
	cfg  config.Config
	recv *testreceiver.Server
	key  *signing.Key
	in   *infra
	log  *slog.Logger
	// regs are the metrics registries of the members started, in order.
	regs []*prometheus.Registry
}

func newPipeline(t testing.TB, remotes []string) *pipeline {
	t.Helper()
	k := testenv.NewKafka(t)
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "signing.key")
	key, err := signing.WriteNewKeyFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	recv, err := testreceiver.Start(testreceiver.Config{Names: remotes, Keys: func(origin, keyID string) (ed25519.PublicKey, error) {
		if origin == "local.test" && keyID == key.ID {
			return key.Public(), nil
		}
		return nil, fmt.Errorf("unknown key %s of %s", keyID, origin)
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = recv.Close() })
	cfg := config.Default()
	cfg.ServerName = "local.test"
	cfg.Instance = "test"
	cfg.DataDir = dir
	cfg.SigningKeyPath = keyPath
	cfg.Kafka.Brokers = []string{k.Addr}
	cfg.Kafka.TopicPrefix = k.Prefix
	cfg.Kafka.Partitions = 4
	cfg.Kafka.OutboundPartitions = 8
	cfg.Database.URL = testenv.Database(t)
	cfg.Relay.PollInterval = 10 * time.Millisecond
	cfg.Ingest.Listen = "127.0.0.1:0"
	cfg.Admin.Listen = ""
	cfg.Federation.Static = map[string]string{}
	for _, r := range remotes {
		cfg.Federation.Static[r] = recv.Addr()
	}
	cfg.Federation.AllowedNetworks = []string{"127.0.0.0/8"}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, recv.CACertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Federation.CAFile = caFile
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	in, err := startInfra(context.Background(), cfg, log, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := in.Close(); err != nil {
			t.Errorf("closing the pipeline's infrastructure: %v", err)
		}
	})
	return &pipeline{t: t, k: k, cfg: cfg, recv: recv, key: key, in: in, log: log}
}

// start runs stages until the returned stop is called; stop returns their error.
func (p *pipeline) start(stages ...string) (stop func() error) {
	p.t.Helper()
	return p.startWith(nil, stages...)
}

// startWith is start with stage options.
func (p *pipeline) startWith(opts *stageOptions, stages ...string) (stop func() error) {
	p.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	g, gctx := errgroup.WithContext(ctx)
	// Each start is like another process: its own metrics registry.
	member := *p.in
	member.reg = prometheus.NewRegistry()
	p.regs = append(p.regs, member.reg)
	if err := member.startStages(gctx, g, stages, opts); err != nil {
		cancel()
		p.t.Fatal(err)
	}
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return g.Wait()
	}
	p.t.Cleanup(func() {
		if err := stop(); err != nil {
			p.t.Errorf("stages %v: %v", stages, err)
		}
	})
	return stop
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }

func remotes(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("remote%d.test", i)
	}
	return out
}

func (p *pipeline) plan(rooms, events int, seed uint64) *loadgen.Plan {
	p.t.Helper()
	plan, err := loadgen.Generate(loadgen.Config{LocalServer: "local.test", RemoteServers: p.recv.Names(), Rooms: rooms, Events: events, ServersPerRoom: 3, Seed: seed})
	if err != nil {
		p.t.Fatal(err)
	}
	return plan
}

// waitDelivered waits until the receivers hold every expected delivery.
func (p *pipeline) waitDelivered(plan *loadgen.Plan, timeout time.Duration) loadgen.Report {
	p.t.Helper()
	var rep loadgen.Report
	testenv.Eventually(p.t, timeout, fmt.Sprintf("%d deliveries", plan.Expected), func() bool {
		rep = plan.Check(p.recv.PDUs, -1)
		return rep.Totals().Delivered == plan.Expected
	})
	return rep
}

func TestEndToEndEveryJoinedServerGetsItsRoomsEvents(t *testing.T) {
	p := newPipeline(t, remotes(5))
	p.start("relay", "router", "sender", "ingest")
	plan := p.plan(30, 1500, 1)
	persist := loadgen.HTTPPersister(http.DefaultClient, "http://"+p.in.listeners["ingest"]+"/_fedpipe/v1/events", "")
	if _, err := plan.Ingest(context.Background(), persist, 100, nil); err != nil {
		t.Fatal(err)
	}
	p.waitDelivered(plan, 60*time.Second)
	// Judge once the router and the sender have committed everything (a sent
	// transaction is committed after its answer): no straggler is still on
	// its way, then nothing unexpected, nothing twice, in room order.
	prefix, broker := p.cfg.Kafka.TopicPrefix, p.cfg.Kafka.Brokers[0]
	testenv.Eventually(t, 60*time.Second, "router and sender caught up", func() bool {
		return groupCaughtUp(t, broker, groupID(prefix, routerGroup), schema.Topic(prefix, "room")) &&
			groupCaughtUp(t, broker, groupID(prefix, senderGroup), schema.Topic(prefix, "outbound"))
	})
	rep := plan.Check(p.recv.PDUs, -1)
	tot := rep.Totals()
	if !rep.OK() || tot.Duplicates != 0 {
		rep.Print(testWriter{t})
		t.Fatalf("deliveries wrong: %+v", tot)
	}
	if n := p.recv.ConcurrentRejections(); n != 0 {
		t.Fatalf("%d concurrent transactions to one destination", n)
	}
	t.Logf("%d events, %d deliveries to %d servers", len(plan.Events), tot.Delivered, len(rep.Servers))
}

// Two sender members share the outbound topic through rebalances (a member
// joins mid-run, another leaves): every delivery happens and no destination
// ever sees two transactions at once.
func TestTwoSendersShareDestinationsThroughRebalances(t *testing.T) {
	p := newPipeline(t, remotes(12)) // enough destinations that both members own some
	p.start("relay", "router")
	stopA := p.start("sender")
	plan := p.plan(40, 3000, 2)
	persist := loadgen.PoolPersister(p.in.pool)
	third := len(plan.Events) / 3
	ctx := context.Background()
	ingest := func(from, to int) {
		for i := from; i < to; i += 100 {
			if err := persist(ctx, plan.Events[i:min(i+100, to)]); err != nil {
				t.Fatal(err)
			}
		}
	}
	regA := p.regs[len(p.regs)-1]
	ingest(0, third)
	p.start("sender") // member B joins: rebalance
	regB := p.regs[len(p.regs)-1]
	// Two senders at once: once both are in one generation (A has rejoined),
	// the middle third goes out through both, not a handoff from one to the
	// other (which destinations each owns depends on the assignment).
	testenv.Eventually(t, 60*time.Second, "A and B in one generation", func() bool {
		return counterSum(t, regA, "fedpipe_consumer_generations_total") >= 2 && counterSum(t, regB, "fedpipe_consumer_generations_total") >= 1
	})
	aBefore := handled(t, regA)
	ingest(third, 2*third)
	testenv.Eventually(t, 60*time.Second, "A and B both sending the middle third", func() bool {
		return handled(t, regA) > aBefore && handled(t, regB) > 0
	})
	if err := stopA(); err != nil { // member A leaves: rebalance again
		t.Fatalf("sender A: %v", err)
	}
	ingest(2*third, len(plan.Events))
	rep := p.waitDelivered(plan, 90*time.Second)
	if !rep.OK() {
		rep.Print(testWriter{t})
		t.Fatal("deliveries wrong")
	}
	if n := p.recv.ConcurrentRejections(); n != 0 {
		t.Fatalf("%d concurrent transactions to one destination", n)
	}
	// What a handoff can send twice: the transaction each destination had in
	// flight when its partition moved (records done before are committed when
	// the partition closes). Two handoffs, 12 destinations, ≤50 PDUs each.
	dups := rep.Totals().Duplicates
	if limit := 2 * 12 * 50; dups > limit {
		t.Fatalf("%d duplicates through two rebalances, more than the %d that can have been in flight", dups, limit)
	}
	t.Logf("A handled %.0f, B %.0f; duplicates through two rebalances: %d of %d", handled(t, regA), handled(t, regB), dups, plan.Expected)
}

// handled is how many outbound records a sender member has handled.
func handled(t *testing.T, reg *prometheus.Registry) float64 {
	return counterSum(t, reg, "fedpipe_consumer_records_handled_total")
}

// counterSum sums a counter's series in reg (0 before its first series).
func counterSum(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	if n == 0 && !testenv.Registered(reg, name) {
		t.Fatalf("metric %s not registered", name)
	}
	return n
}

// noQueryError fails the test on a query's error, unless it found no row: a
// poll reads a missing row as its zero value, but a query that cannot run (a
// renamed table or column) must not read as zero and pass.
func noQueryError(t testing.TB, err error) {
	t.Helper()
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		t.Fatal(err)
	}
}
