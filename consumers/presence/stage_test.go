package presence_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/consumers/presence"
	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

const (
	ourServer = "hs.test"
	syncTopic = "fedpipe.usersync"
	deadTopic = "fedpipe.deadletter"
)

// clock is an injected clock, moved by the test.
type clock struct{ ms atomic.Int64 }

func (c *clock) Now() time.Time          { return time.UnixMilli(c.ms.Load()) }
func (c *clock) Advance(d time.Duration) { c.ms.Add(d.Milliseconds()) }

type env struct {
	addr  string
	pool  *pgxpool.Pool
	clock *clock
	stage *presence.Stage
}

// newEnv runs a presence group member over a kfake broker and a fresh database,
// on an injected clock; its timers run only when the test calls Sweep.
func newEnv(t *testing.T, cfg presence.Config) *env {
	t.Helper()
	cluster, addr := testenv.Broker(t)
	for name, parts := range map[string]int32{syncTopic: 3, deadTopic: 1} {
		if err := cluster.CreateTopic(name, parts, nil); err != nil {
			t.Fatal(err)
		}
	}
	pool := testenv.Pool(t, testenv.Database(t))
	if err := schema.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	c := &clock{}
	c.ms.Store(1_800_000_000_000)
	cfg.ServerName, cfg.Prefix, cfg.Now = ourServer, "fedpipe", c.Now
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewRegistry()
	st, err := presence.New(cfg, pool, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	grp, err := runtime.New(runtime.Config{Brokers: []string{addr}, GroupID: "fedpipe-presence", Topics: []string{syncTopic},
		DeadLetterTopic: deadTopic, Instance: "presence-test"}, st, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return grp.Run(gctx) })
	var once sync.Once
	t.Cleanup(func() {
		once.Do(func() {
			cancel()
			if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("presence group: %v", err)
			}
		})
	})
	return &env{addr: addr, pool: pool, clock: c, stage: st}
}

func (e *env) send(t *testing.T, recs ...schema.UserSyncRecord) {
	t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(e.addr), Topic: syncTopic, Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond, BatchSize: 1000}
	defer w.Close()
	msgs := make([]kafka.Message, len(recs))
	for i, r := range recs {
		r.V = schema.SchemaVersion
		v, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := schema.ValidateRecord("usersync", v); err != nil {
			t.Fatal(err)
		}
		msgs[i] = kafka.Message{Key: []byte(r.Instance), Value: v}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
}

func syncing(instance, user string, on bool) schema.UserSyncRecord {
	return schema.UserSyncRecord{Kind: schema.KindUserSync, Instance: instance, UserID: user, Syncing: &on}
}

// streamRow is a user's presence_stream row.
type streamRow struct {
	id    int64
	state string
}

func (e *env) stream(t *testing.T) map[string]streamRow {
	t.Helper()
	rows, err := e.pool.Query(context.Background(), `SELECT user_id, stream_id, state FROM presence_stream`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]streamRow{}
	for rows.Next() {
		var u string
		var r streamRow
		if err := rows.Scan(&u, &r.id, &r.state); err != nil {
			t.Fatal(err)
		}
		out[u] = r
	}
	return out
}

func (e *env) waitStates(t *testing.T, want map[string]string) {
	t.Helper()
	var got map[string]streamRow
	testenv.Eventually(t, 30*time.Second, "presence stream states", func() bool {
		got = e.stream(t)
		for u, s := range want {
			if got[u].state != s {
				return false
			}
		}
		return true
	})
}

func (e *env) sweep(t *testing.T, expire bool) {
	t.Helper()
	if _, err := e.stage.Sweep(context.Background(), expire); err != nil {
		t.Fatal(err)
	}
}

func TestSyncStopTimesOutAfter30s(t *testing.T) {
	e := newEnv(t, presence.Config{})
	e.send(t, syncing("w1", "@a:hs.test", true), syncing("w1", "@b:hs.test", true))
	e.waitStates(t, map[string]string{"@a:hs.test": "online", "@b:hs.test": "online"})
	e.send(t, syncing("w1", "@a:hs.test", false))
	testenv.Eventually(t, 30*time.Second, "sync stop applied", func() bool {
		var n int
		if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM presence_syncing WHERE user_id = '@a:hs.test'`).Scan(&n); err != nil {
			t.Fatal(err) // not 0, which would pass
		}
		return n == 0
	})
	e.clock.Advance(29 * time.Second)
	e.sweep(t, false)
	if s := e.stream(t); s["@a:hs.test"].state != "online" {
		t.Fatalf("offline 29 s after the last sync: %+v", s)
	}
	e.clock.Advance(2 * time.Second)
	e.sweep(t, false)
	// b still syncs; a is offline.
	e.waitStates(t, map[string]string{"@a:hs.test": "offline", "@b:hs.test": "online"})
}

func TestClearAndVanishedInstance(t *testing.T) {
	e := newEnv(t, presence.Config{InstanceTimeout: time.Minute})
	e.send(t,
		syncing("w1", "@a:hs.test", true), syncing("w1", "@both:hs.test", true),
		syncing("w2", "@both:hs.test", true), syncing("w2", "@c:hs.test", true),
		syncing("w3", "@d:hs.test", true))
	e.waitStates(t, map[string]string{"@a:hs.test": "online", "@both:hs.test": "online", "@c:hs.test": "online", "@d:hs.test": "online"})

	// w1 shuts down cleanly: a goes offline at once; both still syncs on w2.
	e.send(t, schema.UserSyncRecord{Kind: schema.KindInstanceClear, Instance: "w1"})
	e.waitStates(t, map[string]string{"@a:hs.test": "offline", "@both:hs.test": "online"})

	// w2 keeps saying it is alive; w3 falls silent. After the timeout w3's
	// user goes offline, w2's do not.
	e.clock.Advance(50 * time.Second)
	e.send(t, schema.UserSyncRecord{Kind: schema.KindInstanceAlive, Instance: "w2"})
	testenv.Eventually(t, 30*time.Second, "w2's alive applied", func() bool {
		var seen int64
		err := e.pool.QueryRow(context.Background(), `SELECT last_seen_ms FROM presence_instances WHERE instance = 'w2'`).Scan(&seen)
		if errors.Is(err, pgx.ErrNoRows) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		return seen == e.clock.Now().UnixMilli()
	})
	e.clock.Advance(20 * time.Second)
	e.sweep(t, true)
	e.waitStates(t, map[string]string{"@d:hs.test": "offline", "@both:hs.test": "online", "@c:hs.test": "online"})
}

func TestRemoteUsersSyncsAreDeadLettered(t *testing.T) {
	e := newEnv(t, presence.Config{})
	on := true
	e.send(t, schema.UserSyncRecord{Kind: schema.KindUserSync, Instance: "w1", UserID: "@x:elsewhere.test", Syncing: &on},
		syncing("w1", "@a:hs.test", true))
	e.waitStates(t, map[string]string{"@a:hs.test": "online"})
	if _, ok := e.stream(t)["@x:elsewhere.test"]; ok {
		t.Fatal("a remote user's sync became presence")
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{e.addr}, Topic: deadTopic, Partition: 0, MaxWait: 500 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := r.ReadMessage(ctx)
	if err != nil {
		t.Fatalf("no dead letter: %v", err)
	}
	if rec, _ := schema.DecodeUserSyncRecord(m.Value); rec.UserID != "@x:elsewhere.test" {
		t.Fatalf("dead letter %s", m.Value)
	}
}

// TestPingsSpreadOverTheInterval: users who came online together and change
// nothing are re-announced before remotes' 30-minute timeout, and their pings
// are spread over the 25-minute interval instead of coming as one burst.
func TestPingsSpreadOverTheInterval(t *testing.T) {
	const users = 600
	e := newEnv(t, presence.Config{SweepBatch: 200})
	var recs []schema.UserSyncRecord
	want := map[string]string{}
	for i := range users {
		u := fmt.Sprintf("@u%d:hs.test", i)
		recs = append(recs, syncing("w1", u, true))
		want[u] = "online"
	}
	e.send(t, recs...)
	e.waitStates(t, want)
	// Minute 1: currently_active ends; minute 5: everyone is idle. Both are
	// real changes, sent to everyone as they happen (as Synapse does).
	step := 30 * time.Second
	last := map[string]int64{} // user → clock of their last stream write
	prev := e.stream(t)
	for u := range prev {
		last[u] = e.clock.Now().UnixMilli()
	}
	start := e.clock.Now()
	pingsPerMinute := map[int]int{}
	var worstGap time.Duration
	for e.clock.Now().Sub(start) < 45*time.Minute {
		e.clock.Advance(step)
		e.sweep(t, false)
		now := e.clock.Now().UnixMilli()
		cur := e.stream(t)
		for u, r := range cur {
			if r.id == prev[u].id {
				continue
			}
			gap := time.Duration(now-last[u]) * time.Millisecond
			worstGap = max(worstGap, gap)
			last[u] = now
			if r.state == prev[u].state && e.clock.Now().Sub(start) > 6*time.Minute {
				pingsPerMinute[int(e.clock.Now().Sub(start)/time.Minute)]++
			}
		}
		prev = cur
	}
	for u, r := range prev {
		if r.state != "unavailable" {
			t.Fatalf("%s is %s after 45 idle minutes of syncing", u, r.state)
		}
		if gap := time.Duration(e.clock.Now().UnixMilli()-last[u]) * time.Millisecond; gap > 26*time.Minute {
			t.Fatalf("%s last told remotes %s ago", u, gap)
		}
	}
	if worstGap > 26*time.Minute {
		t.Fatalf("a user went %s without a presence write; remotes time out after 30 minutes", worstGap)
	}
	// Over a full interval (minutes 7–31) each minute holds about 1/25 of the
	// users' pings: none may hold a burst.
	total := 0
	for m := 7; m < 32; m++ {
		total += pingsPerMinute[m]
		if pingsPerMinute[m] > 3*users/25 {
			t.Errorf("minute %d holds %d pings of %d users: a burst (%v)", m, pingsPerMinute[m], users, pingsPerMinute)
		}
	}
	if total < users*9/10 {
		t.Errorf("only %d of %d users pinged in one interval (%v)", total, users, pingsPerMinute)
	}
	t.Logf("worst gap between writes %s; pings per minute %v", worstGap, pingsPerMinute)
}

// TestBurstOfOneUserIsCoalescedAtTheSource: records that arrive together are
// applied together, so 10,000 updates of one user become few stream writes,
// the last state winning.
func TestBurstOfOneUserIsCoalescedAtTheSource(t *testing.T) {
	e := newEnv(t, presence.Config{})
	e.send(t, syncing("w1", "@storm:hs.test", true))
	e.waitStates(t, map[string]string{"@storm:hs.test": "online"})
	first := e.stream(t)["@storm:hs.test"].id
	const updates = 10000
	var recs []schema.UserSyncRecord
	for i := range updates {
		msg := fmt.Sprintf("update %d", i+1)
		recs = append(recs, schema.UserSyncRecord{Kind: schema.KindSetPresence, Instance: "w1", UserID: "@storm:hs.test", Presence: "online", StatusMsg: &msg})
	}
	e.send(t, recs...)
	want := fmt.Sprintf("update %d", updates)
	var status string
	testenv.Eventually(t, 60*time.Second, "the last update applied", func() bool {
		if err := e.pool.QueryRow(context.Background(), `SELECT COALESCE(status_msg, '') FROM presence_stream WHERE user_id = '@storm:hs.test'`).Scan(&status); err != nil {
			t.Fatal(err) // the user's row was written before the burst
		}
		return status == want
	})
	// Every stream write takes one position of the sequence. The stage applies
	// at most 500 records per transaction (a batch ends there or at the
	// partition's high-water mark), and e.send's writer sends 1,000 records
	// per produce request: a batch can end early only at one of those 10
	// boundaries. So at most 10,000/500 + 10,000/1,000 = 30 writes; without
	// coalescing it would be 10,000.
	const stageBatch, producerBatch = 500, 1000
	writes := e.stream(t)["@storm:hs.test"].id - first
	if limit := int64(updates/stageBatch + updates/producerBatch); writes > limit {
		t.Fatalf("%d updates became %d stream writes, want at most %d", updates, writes, limit)
	}
	t.Logf("%d updates of one user became %d stream writes", updates, writes)
}
