package usersync_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/usersync"
	"github.com/fedpipe/fedpipe/schema"
)

const topic = "fedpipe.usersync"

// broker starts kfake with the usersync topic and returns its address.
func broker(t *testing.T) string {
	t.Helper()
	cluster, addr := testenv.Broker(t)
	if err := cluster.CreateTopic(topic, 4, nil); err != nil {
		t.Fatal(err)
	}
	return addr
}

// flaky writes through a real writer but fails while failing is set.
type flaky struct {
	usersync.Writer
	failing atomic.Bool
}

func (f *flaky) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	if f.failing.Load() {
		return errors.New("broker unreachable (test)")
	}
	return f.Writer.WriteMessages(ctx, msgs...)
}

func writer(t *testing.T, addr string) *kafka.Writer {
	t.Helper()
	w := kafkaio.NewWriter([]string{addr}, topic)
	t.Cleanup(func() { w.Close() })
	return w
}

func publisher(t *testing.T, cfg usersync.Config) *usersync.Publisher {
	t.Helper()
	if cfg.Instance == "" {
		cfg.Instance = "sync1"
	}
	p, err := usersync.New(cfg, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("closing: %v", err)
		}
	})
	return p
}

type record = testenv.UserSyncMessage

// readAll reads every record of the topic until at least n have arrived (or
// the deadline passes), checked against their schema, key and headers.
func readAll(t *testing.T, addr string, n int) []record {
	t.Helper()
	return testenv.ReadUserSync(t, addr, topic, 4, n)
}

// describe renders records as "kind user syncing" lines for comparison.
func describe(recs []record) []string {
	var out []string
	for _, r := range recs {
		s := r.Kind
		if r.UserID != "" {
			s += " " + r.UserID
		}
		if r.Syncing != nil {
			s += fmt.Sprint(" ", *r.Syncing)
		}
		if r.Presence != "" {
			s += " " + r.Presence
			if r.StatusMsg != nil {
				s += " " + *r.StatusMsg
			}
		}
		out = append(out, s)
	}
	return out
}

func ptr(s string) *string { return &s }

func TestSyncsAreCountedPerUser(t *testing.T) {
	addr := broker(t)
	p := publisher(t, usersync.Config{Writer: writer(t, addr), ServerName: "hs.test"})
	ctx := context.Background()
	before := time.Now().UnixMilli()
	steps := []struct {
		name string
		do   func() error
	}{
		{"a starts", func() error { return p.StartSyncing(ctx, "@a:hs.test") }},
		{"a starts a second sync", func() error { return p.StartSyncing(ctx, "@a:hs.test") }},
		{"b starts", func() error { return p.StartSyncing(ctx, "@b:hs.test") }},
		{"a ends one sync", func() error { return p.StopSyncing(ctx, "@a:hs.test") }},
		{"a is active", func() error { return p.UserActive(ctx, "@a:hs.test") }},
		{"a ends the last sync", func() error { return p.StopSyncing(ctx, "@a:hs.test") }},
		{"b sets a status", func() error { return p.SetPresence(ctx, "@b:hs.test", "unavailable", ptr("lunch <b>")) }},
		{"b clears it", func() error { return p.SetPresence(ctx, "@b:hs.test", "online", nil) }},
		{"a starts again", func() error { return p.StartSyncing(ctx, "@a:hs.test") }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
	if err := p.StopSyncing(ctx, "@c:hs.test"); !errors.Is(err, usersync.ErrNotSyncing) {
		t.Fatalf("stopping a sync never started: %v, want ErrNotSyncing", err)
	}
	want := []string{
		"user_sync @a:hs.test true",
		"user_sync @b:hs.test true",
		"user_active @a:hs.test",
		"user_sync @a:hs.test false",
		"set_presence @b:hs.test unavailable lunch <b>",
		"set_presence @b:hs.test online",
		"user_sync @a:hs.test true",
	}
	recs := readAll(t, addr, len(want))
	if got := describe(recs); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("records:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	after := time.Now().UnixMilli()
	for _, r := range recs {
		if r.Key != "sync1" || r.Partition != recs[0].Partition || r.TS < before || r.TS > after {
			t.Errorf("record %+v: want key sync1 on one partition, ts in [%d, %d]", r, before, after)
		}
	}
}

func TestConcurrentSyncsKeepEachUsersTransitionsInOrder(t *testing.T) {
	addr := broker(t)
	p := publisher(t, usersync.Config{Writer: writer(t, addr)})
	ctx := context.Background()
	users := []string{"@u0:hs.test", "@u1:hs.test", "@u2:hs.test", "@u3:hs.test"}
	var g errgroup.Group
	for i := 0; i < 40; i++ {
		u := users[i%len(users)]
		g.Go(func() error {
			for j := 0; j < 5; j++ {
				if err := p.StartSyncing(ctx, u); err != nil {
					return err
				}
				if err := p.StopSyncing(ctx, u); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	// Mark the end, so the reader knows when everything has arrived.
	if err := p.UserActive(ctx, "@end:hs.test"); err != nil {
		t.Fatal(err)
	}
	var recs []record
	testenv.Eventually(t, 20*time.Second, "the end marker", func() bool {
		recs = readAll(t, addr, 1)
		return len(recs) > 0 && recs[len(recs)-1].UserID == "@end:hs.test"
	})
	last := map[string]bool{}
	for _, r := range recs[:len(recs)-1] {
		if r.Kind != schema.KindUserSync {
			t.Fatalf("unexpected record %+v", r)
		}
		if *r.Syncing == last[r.UserID] {
			t.Fatalf("%s: two user_sync %v in a row", r.UserID, *r.Syncing)
		}
		last[r.UserID] = *r.Syncing
	}
	for _, u := range users {
		if _, seen := last[u]; !seen || last[u] {
			t.Errorf("%s: last user_sync syncing=%v (seen %v), want false", u, last[u], seen)
		}
	}
}

func TestBadInputWritesNothing(t *testing.T) {
	addr := broker(t)
	p := publisher(t, usersync.Config{Writer: writer(t, addr), ServerName: "hs.test"})
	ctx := context.Background()
	cases := []struct {
		name string
		do   func() error
		want string
	}{
		{"user id without server", func() error { return p.StartSyncing(ctx, "@alice") }, `"@alice" is not like @user:server`},
		{"user id without sigil", func() error { return p.UserActive(ctx, "alice:hs.test") }, "is not like @user:server"},
		{"empty user id", func() error { return p.StopSyncing(ctx, "") }, "is not like @user:server"},
		{"user of another server", func() error { return p.StartSyncing(ctx, "@bob:remote.test") }, "not a user of hs.test"},
		{"unknown presence", func() error { return p.SetPresence(ctx, "@a:hs.test", "busy", nil) }, `presence "busy"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.do()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want it to say %q", err, c.want)
			}
		})
	}
	if err := p.UserActive(ctx, "@marker:hs.test"); err != nil {
		t.Fatal(err)
	}
	if got := describe(readAll(t, addr, 1)); len(got) != 1 || got[0] != "user_active @marker:hs.test" {
		t.Fatalf("records %q, want only the marker", got)
	}
}

func TestRunClearsOnStartKeepsAliveAndClearsOnShutdown(t *testing.T) {
	addr := broker(t)
	p := publisher(t, usersync.Config{Writer: writer(t, addr), AliveInterval: 20 * time.Millisecond})
	ctx := context.Background()
	// A sync counted before Run starts is written again after its clear.
	if err := p.StartSyncing(ctx, "@early:hs.test"); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx) }()
	testenv.Eventually(t, 20*time.Second, "three instance_alive records", func() bool {
		n := 0
		for _, r := range readAll(t, addr, 5) {
			if r.Kind == schema.KindInstanceAlive {
				n++
			}
		}
		return n >= 3
	})
	if err := p.StartSyncing(ctx, "@late:hs.test"); err != nil {
		t.Fatal(err)
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	got := describe(readAll(t, addr, 8))
	var kept []string // without the alive ticks, whose number depends on timing
	for _, s := range got {
		if s != schema.KindInstanceAlive {
			kept = append(kept, s)
		}
	}
	want := []string{"user_sync @early:hs.test true", "instance_clear", "user_sync @early:hs.test true",
		"user_sync @late:hs.test true", "instance_clear"}
	if strings.Join(kept, "\n") != strings.Join(want, "\n") {
		t.Fatalf("records without alive ticks:\n%s\nwant:\n%s", strings.Join(kept, "\n"), strings.Join(want, "\n"))
	}
	if got[len(got)-1] != schema.KindInstanceClear {
		t.Fatalf("last record %q, want instance_clear", got[len(got)-1])
	}
	if err := p.StopSyncing(ctx, "@late:hs.test"); !errors.Is(err, usersync.ErrClosed) {
		t.Fatalf("StopSyncing after shutdown: %v, want ErrClosed", err)
	}
}

// gauge reads a gauge's value from reg.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func TestFailedWriteIsReturnedAndRepairedByRun(t *testing.T) {
	addr := broker(t)
	w := &flaky{Writer: writer(t, addr)}
	reg := prometheus.NewRegistry()
	p, err := usersync.New(usersync.Config{Instance: "sync1", Writer: w, AliveInterval: 20 * time.Millisecond, MaxAliveFailures: 1000},
		slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx) }()
	testenv.Eventually(t, 20*time.Second, "the start clear", func() bool { return len(readAll(t, addr, 1)) > 0 })
	if err := p.StartSyncing(ctx, "@a:hs.test"); err != nil {
		t.Fatal(err)
	}
	if got := gauge(t, reg, "fedpipe_usersync_syncing_users"); got != 1 {
		t.Fatalf("syncing users %v, want 1", got)
	}

	w.failing.Store(true)
	err = p.StopSyncing(ctx, "@a:hs.test")
	if err == nil || !strings.Contains(err.Error(), "@a:hs.test") || !strings.Contains(err.Error(), "sync1") {
		t.Fatalf("failed stop: %v, want an error naming the user and the instance", err)
	}
	// A failed start is not counted: no StopSyncing is owed for it.
	if err := p.StartSyncing(ctx, "@b:hs.test"); err == nil {
		t.Fatal("StartSyncing succeeded while the writer fails")
	}
	if err := p.StopSyncing(ctx, "@b:hs.test"); !errors.Is(err, usersync.ErrNotSyncing) {
		t.Fatalf("stopping the sync that failed to start: %v, want ErrNotSyncing", err)
	}
	if got := gauge(t, reg, "fedpipe_usersync_syncing_users"); got != 0 {
		t.Fatalf("syncing users %v, want 0", got)
	}

	// Both may or may not have reached the presence stage; once the broker
	// is back, the next round writes their state again.
	w.failing.Store(false)
	testenv.Eventually(t, 20*time.Second, "the repaired states", func() bool {
		got := strings.Join(describe(readAll(t, addr, 4)), "\n")
		return strings.Contains(got, "user_sync @a:hs.test false") && strings.Contains(got, "user_sync @b:hs.test false")
	})
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, r := range readAll(t, addr, 5) {
		if r.Kind != schema.KindInstanceAlive {
			kinds = append(kinds, describe([]record{r})[0])
		}
	}
	sort.Strings(kinds[2:4]) // the repair's order of users is not defined
	want := []string{"instance_clear", "user_sync @a:hs.test true", "user_sync @a:hs.test false", "user_sync @b:hs.test false", "instance_clear"}
	if strings.Join(kinds, "\n") != strings.Join(want, "\n") {
		t.Fatalf("records without alive ticks:\n%s\nwant:\n%s", strings.Join(kinds, "\n"), strings.Join(want, "\n"))
	}
}

func TestRunGivesUpAfterFailedRoundsWithoutClearing(t *testing.T) {
	addr := broker(t)
	w := &flaky{Writer: writer(t, addr)}
	p := publisher(t, usersync.Config{Instance: "sync7", Writer: w, AliveInterval: 10 * time.Millisecond, MaxAliveFailures: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	testenv.Eventually(t, 20*time.Second, "the start clear", func() bool { return len(readAll(t, addr, 1)) > 0 })
	w.failing.Store(true)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "sync7") || !strings.Contains(err.Error(), "3 rounds failed") {
			t.Fatalf("Run: %v, want the failure of 3 rounds of sync7", err)
		}
	case <-ctx.Done():
		t.Fatal("Run kept going while every write failed")
	}
	w.failing.Store(false)
	if err := p.UserActive(context.Background(), "@marker:hs.test"); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range describe(readAll(t, addr, 2)) {
		if s != schema.KindInstanceAlive {
			got = append(got, s)
		}
	}
	if strings.Join(got, ",") != "instance_clear,user_active @marker:hs.test" {
		t.Fatalf("records %q: want no clear after the failure", got)
	}
}

func TestDefaultWriter(t *testing.T) {
	addr := broker(t)
	p, err := usersync.New(usersync.Config{Instance: "sync1", Brokers: []string{addr}}, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SetPresence(context.Background(), "@a:hs.test", "offline", ptr("")); err != nil {
		t.Fatal(err)
	}
	if got := describe(readAll(t, addr, 1)); strings.Join(got, ",") != "set_presence @a:hs.test offline " {
		t.Fatalf("records %q", got)
	}
	for i := 0; i < 2; i++ {
		if err := p.Close(); err != nil {
			t.Fatalf("close %d: %v", i, err)
		}
	}
	if err := p.UserActive(context.Background(), "@a:hs.test"); !errors.Is(err, usersync.ErrClosed) {
		t.Fatalf("after Close: %v, want ErrClosed", err)
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		cfg  usersync.Config
		want string
	}{
		{"no instance", usersync.Config{Brokers: []string{"x:9092"}}, "Instance is required"},
		{"no brokers or writer", usersync.Config{Instance: "s"}, "Brokers"},
		{"negative interval", usersync.Config{Instance: "s", Brokers: []string{"x:9092"}, AliveInterval: -time.Second}, "must be positive"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := c.cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want %q", err, c.want)
			}
		})
	}
	cfg := usersync.Config{Instance: "s", Brokers: []string{"x:9092"}}
	if err := cfg.Validate(); err != nil || cfg.TopicPrefix != "fedpipe" || cfg.AliveInterval != time.Minute {
		t.Fatalf("defaults: %+v, %v", cfg, err)
	}
}

// TestUserActiveIsWrittenOncePerInterval: a worker may call UserActive on
// every request; the broker gets one record per user per ActiveInterval, and
// a user's SetPresence lets their next activity through at once.
func TestUserActiveIsWrittenOncePerInterval(t *testing.T) {
	addr := broker(t)
	const interval = 300 * time.Millisecond
	p := publisher(t, usersync.Config{Writer: writer(t, addr), ActiveInterval: interval})
	ctx := context.Background()
	start := time.Now()
	const calls = 2000
	for i := range calls {
		if err := p.UserActive(ctx, "@busy:hs.test"); err != nil {
			t.Fatal(err)
		}
		if i == calls/2 {
			if err := p.UserActive(ctx, "@other:hs.test"); err != nil {
				t.Fatal(err)
			}
		}
	}
	elapsed := time.Since(start)
	if err := p.SetPresence(ctx, "@busy:hs.test", "unavailable", nil); err != nil {
		t.Fatal(err)
	}
	if err := p.UserActive(ctx, "@busy:hs.test"); err != nil {
		t.Fatal(err)
	}
	if err := p.UserActive(ctx, "@marker:hs.test"); err != nil {
		t.Fatal(err)
	}
	var got []string
	testenv.Eventually(t, 20*time.Second, "the marker", func() bool {
		got = describe(readAll(t, addr, 1))
		return len(got) > 0 && got[len(got)-1] == "user_active @marker:hs.test"
	})
	busy := 0
	for _, s := range got[:len(got)-3] {
		switch s {
		case "user_active @busy:hs.test":
			busy++
		case "user_active @other:hs.test":
		default:
			t.Fatalf("unexpected record %q in %q", s, got)
		}
	}
	// One record at the first call, then at most one per interval passed.
	if most := 1 + int(elapsed/interval); busy < 1 || busy > most {
		t.Errorf("%d calls in %s wrote %d records for @busy, want 1 to %d", calls, elapsed, busy, most)
	}
	if tail := got[len(got)-3:]; tail[0] != "set_presence @busy:hs.test unavailable" || tail[1] != "user_active @busy:hs.test" {
		t.Errorf("after SetPresence: %q, want the set_presence and then the next activity written", tail)
	}
	if n := strings.Count(strings.Join(got, "\n"), "user_active @other:hs.test"); n != 1 {
		t.Errorf("@other's one call wrote %d records", n)
	}
	// Once the interval has passed, the next call is written again.
	time.Sleep(interval)
	for range 10 {
		if err := p.UserActive(ctx, "@busy:hs.test"); err != nil {
			t.Fatal(err)
		}
	}
	n := len(got)
	testenv.Eventually(t, 20*time.Second, "the call after the interval", func() bool { got = describe(readAll(t, addr, n+1)); return len(got) > n })
	if extra := got[n:]; len(extra) != 1 || extra[0] != "user_active @busy:hs.test" {
		t.Errorf("10 calls after the interval wrote %q, want one user_active", extra)
	}
	t.Logf("%d calls in %s: %d user_active records", calls, elapsed, busy)
}
