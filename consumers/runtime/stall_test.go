package runtime_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// stuckStage never finishes partition 0's first record until released; the
// other partitions go through.
type stuckStage struct {
	mu      sync.Mutex
	release chan struct{}
	handled int
}

type stuckHandler struct {
	s *stuckStage
	p int
}

func (s *stuckStage) Open(_ context.Context, _ string, p int) (runtime.PartitionHandler, error) {
	return &stuckHandler{s: s, p: p}, nil
}

func (h *stuckHandler) Handle(ctx context.Context, m kafka.Message, done func()) error {
	if h.p == 0 {
		select {
		case <-h.s.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	h.s.mu.Lock()
	h.s.handled++
	h.s.mu.Unlock()
	done()
	return nil
}

func (h *stuckHandler) Close(context.Context) error { return nil }

// syncBuffer is a log sink safe for the runtime's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestStalledPartitionIsAMetricAndAWarningUntilItMoves(t *testing.T) {
	k := setup(t, 2)
	addr := k.Addr
	produce(t, addr, k.Topic("in"), 20)
	stage := &stuckStage{release: make(chan struct{})}
	logs := &syncBuffer{}
	reg := prometheus.NewRegistry()
	g, err := runtime.New(runtime.Config{Brokers: []string{addr}, GroupID: k.Group("g"), Topics: []string{k.Topic("in")}, DeadLetterTopic: k.Topic("dead"),
		CommitInterval: 20 * time.Millisecond, SessionTimeout: 2 * time.Second, RebalanceTimeout: 2 * time.Second,
		HeartbeatInterval: 200 * time.Millisecond, StallAfter: time.Second, StallCheckInterval: 100 * time.Millisecond},
		stage, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- g.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("run: %v", err)
		}
	}()

	stalled := func() float64 { return stalledGauge(t, reg, k.Group("g"), k.Topic("in")) }
	testenv.Eventually(t, 20*time.Second, "partition 0 reported stalled", func() bool { return stalled() == 1 })
	out := logs.String()
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "consumer group partition stalled") ||
		!strings.Contains(out, "partition=0") || strings.Contains(out, "owner=none") {
		t.Fatalf("want a warning naming partition 0 and its owner, logs:\n%s", out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "consumer group partition stalled") && !strings.Contains(line, "partition=0 ") {
			t.Fatalf("only partition 0 is stuck; reported: %s", line)
		}
	}

	close(stage.release)
	testenv.Eventually(t, 20*time.Second, "the stall cleared once partition 0 moves", func() bool { return stalled() == 0 })
	if !strings.Contains(logs.String(), "consumer group partition moving again") {
		t.Fatalf("want the recovery logged, logs:\n%s", logs.String())
	}
}

// stalledGauge returns fedpipe_consumer_stalled_partitions of group and topic
// from reg, or -1 before the first check has set it.
func stalledGauge(t *testing.T, reg *prometheus.Registry, group, topic string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "fedpipe_consumer_stalled_partitions" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["group"] == group && labels["topic"] == topic {
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}
