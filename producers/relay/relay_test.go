package relay_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/producers/relay"
	"github.com/fedpipe/fedpipe/schema"
)

type env struct {
	k     *testenv.Kafka
	pool  *pgxpool.Pool
	addr  string
	room  string // the topics' names
	state string
	// relay starts a relay that runs until stop is called or the test ends
	// (a run error fails the test), and returns its metrics.
	relay func() (stop func(), reg *prometheus.Registry)
}

// setup creates the room, state and presence topics of 4 partitions, with
// roomConfigs on the room topic, and a migrated database.
func setup(t *testing.T, roomConfigs map[string]string) *env {
	t.Helper()
	k := testenv.NewKafka(t)
	room := k.CreateTopic(t, "room", 4, roomConfigs)
	state := k.CreateTopic(t, "state", 4, map[string]string{"cleanup.policy": "compact"})
	presenceTopic := k.CreateTopic(t, "presence", 4, nil)
	addr := k.Addr
	pool := testenv.Pool(t, testenv.Database(t))
	if err := schema.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	e := &env{k: k, pool: pool, addr: addr, room: room, state: state}
	e.relay = func() (func(), *prometheus.Registry) {
		w := func(topic string) *kafka.Writer {
			return &kafka.Writer{Addr: kafka.TCP(addr), Topic: topic, RequiredAcks: kafka.RequireAll, Balancer: &kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond, MaxAttempts: 2}
		}
		room, state, presence := w(room), w(state), w(presenceTopic)
		reg := prometheus.NewRegistry()
		r, err := relay.New(relay.Config{Instance: "test", PollInterval: 10 * time.Millisecond, BatchSize: 7}, pool, room, state, slog.New(slog.DiscardHandler), reg,
			relay.WithPresence(presence))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { room.Close(); state.Close(); presence.Close() }) // after the relay stops: cleanups run last first
		stopRun := testenv.Background(t, "relay", r.Run)
		var once sync.Once
		return func() {
			once.Do(func() {
				if err := stopRun(); err != nil {
					t.Errorf("relay: %v", err)
				}
			})
		}, reg
	}
	return e
}

func ev(room string, n int, member string) outbox.EventWithDeltas {
	sum := sha256.Sum256([]byte(fmt.Sprint(room, n)))
	e := outbox.EventWithDeltas{Event: outbox.Event{EventID: "$" + base64.RawURLEncoding.EncodeToString(sum[:]), RoomID: room, RoomVersion: "10", Sender: "@a:hs.test", Type: "m.room.message",
		PDU: json.RawMessage(fmt.Sprintf(`{"n":%d,"body":"<i>x</i>"}`, n))}}
	if member != "" {
		e.Type = "m.room.member"
		e.StateKey = &member
		e.Deltas = []outbox.StateDelta{{Type: "m.room.member", StateKey: member, EventID: e.EventID, Membership: "join"}}
	}
	return e
}

// readAll reads every record of topic until n have arrived or the deadline passes.
func readAll(t *testing.T, addr, topic string, n int) []kafka.Message {
	t.Helper()
	var out []kafka.Message
	deadline := time.Now().Add(20 * time.Second)
	conn, err := kafka.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	for len(out) < n && time.Now().Before(deadline) {
		out = out[:0]
		for _, p := range parts {
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: topic, Partition: p.ID, MaxWait: 500 * time.Millisecond})
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			for {
				m, err := r.FetchMessage(ctx)
				if err != nil {
					break
				}
				out = append(out, m)
			}
			cancel()
			r.Close()
		}
	}
	return out
}

func TestPublishesInOrderWithKeysAndHeaders(t *testing.T) {
	e := setup(t, nil)
	ctx := context.Background()
	var events []outbox.EventWithDeltas
	for i := 0; i < 20; i++ {
		member := ""
		if i%5 == 0 {
			member = fmt.Sprintf("@u%d:remote.test", i)
		}
		events = append(events, ev([]string{"!aa:hs.test", "!bb:hs.test", "!cc:hs.test"}[i%3], i, member))
	}
	if _, err := outbox.PersistBatch(ctx, e.pool, events); err != nil {
		t.Fatal(err)
	}
	stop, _ := e.relay()
	defer stop()
	msgs := readAll(t, e.addr, e.room, 24)
	if len(msgs) != 24 {
		t.Fatalf("%d room records, want 24 (20 events + 4 deltas)", len(msgs))
	}
	last := map[string]int64{}
	var prevKind = map[string]string{}
	for _, m := range msgs {
		if err := schema.ValidateRecord("room", m.Value); err != nil {
			t.Fatalf("record fails its schema: %v", err)
		}
		rec, err := schema.DecodeRoomRecord(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Key) != rec.RoomID {
			t.Fatalf("key %s for room %s", m.Key, rec.RoomID)
		}
		if rec.Position < last[rec.RoomID] || rec.Position == last[rec.RoomID] && !(prevKind[rec.RoomID] == schema.KindEvent && rec.Kind == schema.KindStateDelta) {
			t.Fatalf("room %s out of order at %d (%s)", rec.RoomID, rec.Position, rec.Kind)
		}
		last[rec.RoomID], prevKind[rec.RoomID] = rec.Position, rec.Kind
		hdr := map[string]string{}
		for _, h := range m.Headers {
			hdr[h.Key] = string(h.Value)
		}
		if hdr["kind"] != rec.Kind || hdr["schema"] != "1" || hdr["position"] != fmt.Sprint(rec.Position) || hdr["instance"] != "test" {
			t.Fatalf("headers %v", hdr)
		}
		if rec.Kind == schema.KindEvent && !strings.HasSuffix(string(rec.PDU), `,"body":"<i>x</i>"}`) {
			t.Fatalf("PDU bytes changed: %s", rec.PDU)
		}
	}
	state := readAll(t, e.addr, e.state, 4)
	if len(state) != 4 {
		t.Fatalf("%d state records, want 4", len(state))
	}
	for _, m := range state {
		if err := schema.ValidateRecord("state", m.Value); err != nil {
			t.Fatalf("state record fails its schema: %v", err)
		}
		rec, _ := schema.DecodeRoomRecord(m.Value)
		if string(m.Key) != string(schema.StateKey(rec.RoomID, rec.Type, *rec.StateKey)) {
			t.Fatalf("state key %s", m.Key)
		}
	}
	// Restarting resumes from the stored position: nothing is published twice.
	stop()
	if _, err := outbox.PersistBatch(ctx, e.pool, []outbox.EventWithDeltas{ev("!aa:hs.test", 100, "")}); err != nil {
		t.Fatal(err)
	}
	stop2, _ := e.relay()
	defer stop2()
	if got := readAll(t, e.addr, e.room, 25); len(got) != 25 {
		t.Fatalf("after restart %d records, want 25", len(got))
	}
}

// A transaction that took an earlier position but commits later must not be
// skipped: the relay waits for it instead of publishing past it.
func TestLateCommitIsNotSkipped(t *testing.T) {
	e := setup(t, nil)
	ctx := context.Background()
	stop, _ := e.relay()
	defer stop()

	slow, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Rollback(ctx) //nolint:errcheck
	posA, err := outbox.Persist(ctx, slow, []outbox.EventWithDeltas{ev("!aa:hs.test", 1, "")})
	if err != nil {
		t.Fatal(err)
	}
	posB, err := outbox.PersistBatch(ctx, e.pool, []outbox.EventWithDeltas{ev("!aa:hs.test", 2, "")})
	if err != nil {
		t.Fatal(err)
	}
	if posB[0] <= posA[0] {
		t.Fatalf("positions %d, %d: expected the committed one later", posA[0], posB[0])
	}
	// While A is open the relay may publish nothing at or beyond A's position.
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if pos := storedPosition(t, e.pool, "events"); pos >= posA[0] {
			t.Fatalf("relay advanced to %d past the open transaction at %d", pos, posA[0])
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := slow.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// Both, in stream order: the late-committing A first, each once.
	if got := positions(t, readAll(t, e.addr, e.room, 2)); fmt.Sprint(got) != fmt.Sprint([]int64{posA[0], posB[0]}) {
		t.Fatalf("published %v, want %v", got, []int64{posA[0], posB[0]})
	}
	// A rolled-back position leaves a gap the relay passes over.
	tx, _ := e.pool.Begin(ctx)
	if _, err := outbox.Persist(ctx, tx, []outbox.EventWithDeltas{ev("!aa:hs.test", 3, "")}); err != nil {
		t.Fatal(err)
	}
	_ = tx.Rollback(ctx)
	posD, err := outbox.PersistBatch(ctx, e.pool, []outbox.EventWithDeltas{ev("!aa:hs.test", 4, "")})
	if err != nil {
		t.Fatal(err)
	}
	if got := positions(t, readAll(t, e.addr, e.room, 3)); fmt.Sprint(got) != fmt.Sprint([]int64{posA[0], posB[0], posD[0]}) {
		t.Fatalf("after a rollback gap published %v, want %v", got, []int64{posA[0], posB[0], posD[0]})
	}
}

// Many writers committing in random order: every row is published exactly once.
func TestConcurrentWritersAllPublished(t *testing.T) {
	e := setup(t, nil)
	ctx := context.Background()
	stop, _ := e.relay()
	defer stop()
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				_ = pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
					_, err := outbox.Persist(ctx, tx, []outbox.EventWithDeltas{ev(fmt.Sprintf("!w%d:hs.test", w), i, "")})
					time.Sleep(time.Duration((w*7+i)%5) * time.Millisecond) // commit out of position order
					return err
				})
			}
		}()
	}
	wg.Wait()
	msgs := readAll(t, e.addr, e.room, 200)
	seen := map[string]bool{}
	for _, m := range msgs {
		rec, _ := schema.DecodeRoomRecord(m.Value)
		if seen[rec.EventID] {
			t.Fatalf("%s published twice", rec.EventID)
		}
		seen[rec.EventID] = true
	}
	if len(seen) != 200 {
		t.Fatalf("%d of 200 events published", len(seen))
	}
}

func TestBrokerFailureDoesNotAdvance(t *testing.T) {
	pool := testenv.Pool(t, testenv.Database(t))
	ctx := context.Background()
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	// The broker's address, with nothing listening yet: the broker is down.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	w := func(topic string) *kafka.Writer {
		return &kafka.Writer{Addr: kafka.TCP(addr), Topic: topic, RequiredAcks: kafka.RequireAll, MaxAttempts: 1,
			BatchTimeout: time.Millisecond, WriteTimeout: 200 * time.Millisecond}
	}
	room, state := w("fedpipe.room"), w("fedpipe.state")
	defer room.Close()
	defer state.Close()
	reg := prometheus.NewRegistry()
	r, err := relay.New(relay.Config{Instance: "t", PollInterval: 10 * time.Millisecond, RetryDelay: 20 * time.Millisecond}, pool, room, state, slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatal(err)
	}
	var events []outbox.EventWithDeltas
	for i := range 3 {
		events = append(events, ev("!aa:hs.test", i, ""))
	}
	pos, err := outbox.PersistBatch(ctx, pool, events)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(rctx) }()
	defer func() {
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("relay: %v", err)
		}
	}()
	testenv.Eventually(t, 20*time.Second, "the relay tried and failed twice", func() bool {
		return testenv.Value(t, reg, "fedpipe_relay_failures_total") >= 2
	})
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM relay_positions").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d positions stored (%v) although the broker never acknowledged", n, err)
	}
	// The broker comes up on that address: everything is published, in order, once each.
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tp := range []string{"fedpipe.room", "fedpipe.state"} {
		if err := c.CreateTopic(tp, 1, nil); err != nil {
			t.Fatal(err)
		}
	}
	msgs := readAll(t, addr, "fedpipe.room", 3)
	if got := positions(t, msgs); fmt.Sprint(got) != fmt.Sprint(pos) {
		t.Fatalf("after the broker returned the room topic holds %v, want %v in order, once each", got, pos)
	}
	testenv.Eventually(t, 20*time.Second, "the position stored once acknowledged", func() bool {
		return storedPosition(t, pool, "events") == pos[2]
	})
}

// Rounds are cut by bytes as well as by count, and cutting loses or reorders nothing.
func TestRoundsBoundedByBytes(t *testing.T) {
	e := setup(t, nil)
	persistForty(t, e)
	room := &kafka.Writer{Addr: kafka.TCP(e.addr), Topic: e.room, RequiredAcks: kafka.RequireAll, Balancer: &kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond}
	state := &kafka.Writer{Addr: kafka.TCP(e.addr), Topic: e.state, RequiredAcks: kafka.RequireAll, Balancer: &kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond}
	t.Cleanup(func() { room.Close(); state.Close() }) // after the relay stops: cleanups run last first
	reg := prometheus.NewRegistry()
	r, err := relay.New(relay.Config{Instance: "test", PollInterval: 10 * time.Millisecond, MaxRoundBytes: 1500}, e.pool, room, state, slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Background(t, "relay", r.Run)
	fortyInOrder(t, e)
	// metricValue fails the test when the histogram is missing: a renamed
	// metric must not skip the check.
	if n := metricValue(t, reg, "fedpipe_relay_publish_duration_seconds", "events"); n < 5 {
		t.Fatalf("%v publish rounds, want the byte bound to split the 40 events into several", n)
	}
}

// storedPosition reads the relay's stored position of stream, 0 when none is
// stored yet; a failed query fails the test rather than reading as 0.
func storedPosition(t testing.TB, pool *pgxpool.Pool, stream string) int64 {
	t.Helper()
	var pos int64
	if err := pool.QueryRow(context.Background(), "SELECT COALESCE((SELECT position FROM relay_positions WHERE stream = $1), 0)", stream).Scan(&pos); err != nil {
		t.Fatalf("reading the relay's position of %s: %v", stream, err)
	}
	return pos
}

// persistForty persists 40 events of one room, one in four a membership with
// its state delta: 50 room records.
func persistForty(t *testing.T, e *env) {
	t.Helper()
	var events []outbox.EventWithDeltas
	for i := 0; i < 40; i++ {
		member := ""
		if i%4 == 0 {
			member = fmt.Sprintf("@u%d:remote.test", i)
		}
		events = append(events, ev("!aa:hs.test", i, member))
	}
	if _, err := outbox.PersistBatch(context.Background(), e.pool, events); err != nil {
		t.Fatal(err)
	}
}

// fortyInOrder reads persistForty's 50 room records and checks their order.
func fortyInOrder(t *testing.T, e *env) {
	t.Helper()
	msgs := readAll(t, e.addr, e.room, 50)
	if len(msgs) != 50 {
		t.Fatalf("%d room records, want 50", len(msgs))
	}
	var last int64
	for _, m := range msgs {
		rec, err := schema.DecodeRoomRecord(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Position < last {
			t.Fatalf("out of order at %d", rec.Position)
		}
		last = rec.Position
	}
}

// countingWriter records how many records each write of a round carried.
type countingWriter struct {
	*kafka.Writer
	mu    sync.Mutex
	sizes []int
}

func (w *countingWriter) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	w.mu.Lock()
	w.sizes = append(w.sizes, len(msgs))
	w.mu.Unlock()
	return w.Writer.WriteMessages(ctx, msgs...)
}

// A round is cut at MaxRoundRecords records per topic too (the writers'
// batch count, whose message slice kafka-go allocates in full per partition),
// an event with its deltas never split across rounds, and every record
// published in order.
func TestRoundsBoundedByRecords(t *testing.T) {
	e := setup(t, nil)
	persistForty(t, e)
	writer := func(topic string) *countingWriter {
		return &countingWriter{Writer: &kafka.Writer{Addr: kafka.TCP(e.addr), Topic: topic, RequiredAcks: kafka.RequireAll, Balancer: &kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond}}
	}
	room, state := writer(e.room), writer(e.state)
	t.Cleanup(func() { room.Close(); state.Close() }) // after the relay stops: cleanups run last first
	const most = 7
	r, err := relay.New(relay.Config{Instance: "test", PollInterval: 10 * time.Millisecond, MaxRoundRecords: most}, e.pool, room, state, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	testenv.Background(t, "relay", r.Run)
	fortyInOrder(t, e)
	room.mu.Lock()
	defer room.mu.Unlock()
	for _, n := range room.sizes {
		if n > most {
			t.Fatalf("a round wrote %d room records (rounds: %v), want at most %d", n, room.sizes, most)
		}
	}
	if len(room.sizes) < 50/most {
		t.Fatalf("rounds of %v room records: want the record bound to split the 50", room.sizes)
	}
}
