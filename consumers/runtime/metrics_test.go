package runtime_test

import (
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// The consumer metrics of every group of a process share one registry (the
// stages of `fedpipe run`), each series naming its group; a second member of
// the same group in the process reuses them. This pins the series: names,
// label names and values.
func TestGroupMetricsShareARegistryWithTheirLabels(t *testing.T) {
	k := setup(t, 1)
	produce(t, k.Addr, k.Topic("in"), 10)
	reg := prometheus.NewRegistry()
	newGroup := func(id string, r *recorder) *runtime.Group {
		g, err := runtime.New(runtime.Config{Brokers: []string{k.Addr}, GroupID: k.Group(id), Topics: []string{k.Topic("in")}, DeadLetterTopic: k.Topic("dead"),
			CommitInterval: 20 * time.Millisecond, SessionTimeout: 2 * time.Second, RebalanceTimeout: 2 * time.Second, HeartbeatInterval: 200 * time.Millisecond,
			StallCheckInterval: 50 * time.Millisecond}, r, slog.New(slog.DiscardHandler), reg)
		if err != nil {
			t.Fatalf("group %s: %v", id, err)
		}
		return g
	}
	a, b := newRecorder("a"), newRecorder("b")
	a.poison = func(m kafka.Message) bool { return m.Offset == 3 }
	ga, gb := newGroup("a", a), newGroup("b", b)
	newGroup("a", newRecorder("a2")) // registers group a's metrics again: reused
	stopA, stopB := testenv.Background(t, "group a", ga.Run), testenv.Background(t, "group b", gb.Run)
	testenv.Eventually(t, 20*time.Second, "both groups through the topic and committed", func() bool {
		return a.count() == 9 && b.count() == 10 && committedToEnd(t, k, k.Group("a"), k.Topic("in"), 1) &&
			committedToEnd(t, k, k.Group("b"), k.Topic("in"), 1) && stalledSeries(t, reg) == 2
	})
	for _, stop := range []func() error{stopA, stopB} {
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	}
	ga2, gb2, in := "group="+k.Group("a"), "group="+k.Group("b"), "topic="+k.Topic("in")
	want := []string{
		"fedpipe_consumer_generations_total{" + ga2 + "}",
		"fedpipe_consumer_generations_total{" + gb2 + "}",
		"fedpipe_consumer_lag_records{" + ga2 + ",partition=0," + in + "}",
		"fedpipe_consumer_lag_records{" + gb2 + ",partition=0," + in + "}",
		"fedpipe_consumer_record_age_seconds{" + ga2 + "," + in + "}",
		"fedpipe_consumer_record_age_seconds{" + gb2 + "," + in + "}",
		"fedpipe_consumer_records_deadlettered_total{" + ga2 + "," + in + "}",
		"fedpipe_consumer_records_handled_total{" + ga2 + "," + in + "}",
		"fedpipe_consumer_records_handled_total{" + gb2 + "," + in + "}",
		"fedpipe_consumer_stalled_partitions{" + ga2 + "," + in + "}",
		"fedpipe_consumer_stalled_partitions{" + gb2 + "," + in + "}",
	}
	got, values := series(t, reg)
	if !slices.Equal(got, want) {
		t.Errorf("series\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Every fetched record's age is observed, the dead-lettered one's too.
	for s, v := range map[string]float64{want[7]: 9, want[8]: 10, want[6]: 1, want[4]: 10, want[5]: 10} {
		if got := values[s]; got != v {
			t.Errorf("%s = %v, want %v", s, got, v)
		}
	}
}

// stalledSeries is how many groups' stall watches have reported.
func stalledSeries(t *testing.T, reg *prometheus.Registry) int {
	n := 0
	s, _ := series(t, reg)
	for _, x := range s {
		if strings.HasPrefix(x, "fedpipe_consumer_stalled_partitions{") {
			n++
		}
	}
	return n
}

// series lists reg's consumer series as name{label=value,...}, sorted, and
// their values (counters and gauges).
func series(t *testing.T, reg *prometheus.Registry) ([]string, map[string]float64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	values := map[string]float64{}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "fedpipe_consumer_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			s := mf.GetName() + "{" + strings.Join(labels, ",") + "}"
			out = append(out, s)
			values[s] = m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
		}
	}
	slices.Sort(out)
	return out, values
}
