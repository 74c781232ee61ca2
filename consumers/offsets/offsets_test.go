package offsets_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/consumers/offsets"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

// fixture is a topic "in" of 2 partitions of 10 records each, record i of a
// partition stamped t0 + i minutes, and a group "g" at offset 4 on both, on
// kfake or on Apache Kafka (FEDPIPE_TEST_KAFKA_BROKERS).
type fixture struct {
	k         *testenv.Kafka
	addr      string
	tool      *offsets.Tool
	in, group string
}

func setup(t *testing.T) fixture {
	t.Helper()
	k := testenv.NewKafka(t)
	addr := k.Addr
	f := fixture{k: k, addr: addr, in: k.CreateTopic(t, "in", 2, nil), group: k.Group("g")}
	w := &kafka.Writer{Addr: kafka.TCP(addr), Topic: f.in, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond,
		Balancer: kafka.BalancerFunc(func(m kafka.Message, _ ...int) int { p, _ := strconv.Atoi(string(m.Key)); return p })}
	defer w.Close()
	var msgs []kafka.Message
	for p := 0; p < 2; p++ {
		for i := 0; i < 10; i++ {
			msgs = append(msgs, kafka.Message{Key: []byte(strconv.Itoa(p)), Value: []byte("x"), Time: t0.Add(time.Duration(i) * time.Minute)})
		}
	}
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
	f.tool = offsets.New([]string{addr})
	plan, err := f.tool.Plan(context.Background(), f.group, offsets.Selection{Topics: map[string][]int{f.in: nil}}, offsets.Target{Mode: offsets.ModeOffset, Offset: 4})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.tool.Execute(context.Background(), f.group, plan); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestShowReadsCommittedOffsetsAndLag(t *testing.T) {
	f := setup(t)
	rows, err := f.tool.Show(context.Background(), f.group, offsets.Selection{AllTopics: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 {
		t.Fatalf("rows %+v, want both partitions of in", rows)
	}
	for i, r := range rows {
		if r.Topic != f.in || r.Partition != i || r.Current != 4 || r.Start != 0 || r.End != 10 || r.Lag(r.Current) != 6 || r.Owner != "" {
			t.Fatalf("row %d = %+v, want in/%d at 4 of [0,10), lag 6, no owner", i, r, i)
		}
	}
}

func TestPlanFollowsEachResetSpecificationAndClamps(t *testing.T) {
	f := setup(t)
	tool, group := f.tool, f.group
	sel := offsets.Selection{Topics: map[string][]int{f.in: {1}}}
	for _, tc := range []struct {
		name   string
		target offsets.Target
		want   int64
	}{
		{"to earliest", offsets.Target{Mode: offsets.ModeEarliest}, 0},
		{"to latest", offsets.Target{Mode: offsets.ModeLatest}, 10},
		{"to an offset inside", offsets.Target{Mode: offsets.ModeOffset, Offset: 7}, 7},
		{"to an offset past the end is clamped", offsets.Target{Mode: offsets.ModeOffset, Offset: 25}, 10},
		{"to a negative offset is clamped", offsets.Target{Mode: offsets.ModeOffset, Offset: -3}, 0},
		{"shift back", offsets.Target{Mode: offsets.ModeShift, Offset: -2}, 2},
		{"shift back past the start is clamped", offsets.Target{Mode: offsets.ModeShift, Offset: -20}, 0},
		{"shift forward past the end is clamped", offsets.Target{Mode: offsets.ModeShift, Offset: 100}, 10},
		{"to a datetime: the first record at or after it", offsets.Target{Mode: offsets.ModeDatetime, Time: t0.Add(5*time.Minute - time.Second)}, 5},
		{"to a datetime after every record: the end", offsets.Target{Mode: offsets.ModeDatetime, Time: t0.Add(time.Hour)}, 10},
		{"to a datetime before every record: the start", offsets.Target{Mode: offsets.ModeDatetime, Time: t0.Add(-time.Hour)}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows, err := tool.Plan(context.Background(), group, sel, tc.target)
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != 1 || rows[0].Partition != 1 || rows[0].Current != 4 || rows[0].New != tc.want {
				t.Fatalf("plan %+v, want in/1 from 4 to %d", rows, tc.want)
			}
		})
	}
	// A plan is only a plan.
	rows, err := tool.Show(context.Background(), group, sel)
	if err != nil || rows[0].Current != 4 {
		t.Fatalf("after planning, committed = %+v (%v), want still 4", rows, err)
	}
}

func TestByDurationCountsBackFromNow(t *testing.T) {
	f := setup(t)
	tool, group := f.tool, f.group
	d, err := offsets.ParseISODuration("PT3M30S")
	if err != nil {
		t.Fatal(err)
	}
	// Records are stamped t0..t0+9m; now is when the test runs, long after:
	// a duration reaching back before t0 moves to the start, a short one to the end.
	long := time.Since(t0) + time.Minute
	rows, err := tool.Plan(context.Background(), group, offsets.Selection{AllTopics: true}, offsets.Target{Mode: offsets.ModeDuration, Duration: long})
	if err != nil || rows[0].New != 0 {
		t.Fatalf("by %v: %+v %v, want 0", long, rows, err)
	}
	rows, err = tool.Plan(context.Background(), group, offsets.Selection{AllTopics: true}, offsets.Target{Mode: offsets.ModeDuration, Duration: d})
	if err != nil || rows[0].New != 10 {
		t.Fatalf("by %v: %+v %v, want 10", d, rows, err)
	}
}

func TestExecuteRefusesWhileTheGroupHasMembersThenAMemberResumesFromTheNewOffset(t *testing.T) {
	f := setup(t)
	addr, tool, group := f.addr, f.tool, f.group
	sel := offsets.Selection{Topics: map[string][]int{f.in: nil}}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, GroupID: group, Topic: f.in, MaxWait: 500 * time.Millisecond,
		SessionTimeout: 6 * time.Second, HeartbeatInterval: 500 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := r.FetchMessage(ctx) // joined: the group now has a member
	if err != nil {
		t.Fatal(err)
	}
	if m.Offset != 4 {
		t.Fatalf("member started at %d, want the committed 4", m.Offset)
	}
	plan, err := tool.Plan(ctx, group, sel, offsets.Target{Mode: offsets.ModeOffset, Offset: 8})
	if err != nil {
		t.Fatal(err)
	}
	var active *offsets.ActiveGroupError
	if err := tool.Execute(ctx, group, plan); !errors.As(err, &active) || len(active.Members) != 1 || active.Members[0].ID == "" {
		t.Fatalf("execute with a member = %v, want an ActiveGroupError naming it", err)
	}
	if err := r.Close(); err != nil { // leaves the group
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "the reset accepted once the group is empty", func() bool {
		return tool.Execute(ctx, group, plan) == nil
	})
	r2 := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, GroupID: group, Topic: f.in, MaxWait: 500 * time.Millisecond})
	defer r2.Close()
	for i := 0; i < 4; i++ { // 2 left on each partition
		m, err := r2.FetchMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.Offset < 8 {
			t.Fatalf("after the reset a member read %d/%d, want offsets from 8", m.Partition, m.Offset)
		}
	}
}

func TestSelectionErrors(t *testing.T) {
	f := setup(t)
	tool, group := f.tool, f.group
	ctx := context.Background()
	if _, err := tool.Show(ctx, group, offsets.Selection{Topics: map[string][]int{f.in: {2}}}); err == nil {
		t.Fatal("a partition the topic lacks was accepted")
	}
	if _, err := tool.Show(ctx, group, offsets.Selection{Topics: map[string][]int{f.k.Topic("nope"): nil}}); err == nil {
		t.Fatal("a missing topic was accepted")
	}
	if _, err := tool.Show(ctx, f.k.Group("other"), offsets.Selection{AllTopics: true}); err == nil {
		t.Fatal("--all-topics for a group with no offsets was accepted")
	}
	if _, err := tool.Show(ctx, group, offsets.Selection{}); err == nil {
		t.Fatal("an empty selection was accepted")
	}
}

func TestParsing(t *testing.T) {
	var sel offsets.Selection
	for _, arg := range []string{"a", "b:0,2", "b:5"} {
		if err := sel.AddTopic(arg); err != nil {
			t.Fatal(err)
		}
	}
	if len(sel.Topics["a"]) != 0 || len(sel.Topics["b"]) != 3 || sel.Topics["b"][2] != 5 {
		t.Fatalf("topics %v", sel.Topics)
	}
	for _, bad := range []string{":1", "a:x", "a:-1", "a:"} {
		if err := (&offsets.Selection{}).AddTopic(bad); err == nil {
			t.Errorf("--topic %q accepted", bad)
		}
	}
	for in, want := range map[string]time.Duration{"P1DT2H": 26 * time.Hour, "PT30M": 30 * time.Minute, "PT1.5S": 1500 * time.Millisecond, "P2D": 48 * time.Hour, "PT1H2M3S": time.Hour + 2*time.Minute + 3*time.Second} {
		if got, err := offsets.ParseISODuration(in); err != nil || got != want {
			t.Errorf("ParseISODuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "P", "PT", "1h", "P1H", "-PT1M", "P99999999999999999999D"} {
		if _, err := offsets.ParseISODuration(bad); err == nil {
			t.Errorf("ParseISODuration(%q) accepted", bad)
		}
	}
	for in, want := range map[string]time.Time{
		"2026-12-01T10:00:00.000":       time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC),
		"2026-12-01T10:00:00":           time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC),
		"2026-12-01T10:00:00.250+01:00": time.Date(2026, 12, 1, 9, 0, 0, 250e6, time.UTC),
		"2026-12-01T10:00:00Z":          time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC),
	} {
		if got, err := offsets.ParseDatetime(in, time.UTC); err != nil || !got.Equal(want) {
			t.Errorf("ParseDatetime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := offsets.ParseDatetime("yesterday", time.UTC); err == nil {
		t.Error("ParseDatetime(yesterday) accepted")
	}
}
