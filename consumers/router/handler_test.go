package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

// syncWriter writes to a real broker synchronously and then reports done: the
// handler's contract without the runtime's batching.
type syncWriter struct {
	w *kafka.Writer
}

func (s syncWriter) Write(ctx context.Context, msgs []kafka.Message, done func()) error {
	if err := s.w.WriteMessages(ctx, msgs...); err != nil {
		return err
	}
	done()
	return nil
}

func (syncWriter) Settle(context.Context) error { return nil } // nothing is left in flight

// written reads back every outbound record as "position destination".
func written(t *testing.T, addr string) []string {
	t.Helper()
	var out []string
	for p := range 2 {
		conn, err := kafka.DialLeader(context.Background(), "tcp", addr, "fedpipe.outbound", p)
		if err != nil {
			t.Fatal(err)
		}
		last, err := conn.ReadLastOffset()
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.Close()
		if last == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: "fedpipe.outbound", Partition: p, MaxWait: 500 * time.Millisecond})
		for range last {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			m, err := r.ReadMessage(ctx)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			rec, err := schema.DecodeOutboundRecord(m.Value)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, rec.EventID+" "+rec.Destination)
		}
		_ = r.Close()
	}
	slices.Sort(out)
	return out
}

// handlerEnv is a broker with fedpipe.outbound (2 partitions), a migrated
// database, and a synchronous writer to the topic.
func handlerEnv(t *testing.T) (addr string, pool *pgxpool.Pool, w *kafka.Writer) {
	t.Helper()
	cluster, addr := testenv.Broker(t)
	if err := cluster.CreateTopic("fedpipe.outbound", 2, nil); err != nil {
		t.Fatal(err)
	}
	pool = testenv.Pool(t, testenv.Database(t))
	if err := schema.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	w = &kafka.Writer{Addr: kafka.TCP(addr), Topic: "fedpipe.outbound", Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	t.Cleanup(func() { _ = w.Close() })
	return addr, pool, w
}

func record(t *testing.T, rec schema.RoomRecord) kafka.Message {
	t.Helper()
	v, err := rec.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return kafka.Message{Key: []byte(rec.RoomID), Value: v}
}

// TestHandlerReplayAfterDeltasStored is the crash the replay rules exist for:
// a kick's delta is stored, the process dies before the offsets of the kick and
// of the message before it are committed, and the next owner handles both again
// with a fresh cache. Routed from the stored (current) membership, the message
// would miss the kicked server, which was joined when it was sent.
func TestHandlerReplayAfterDeltasStored(t *testing.T) {
	addr, pool, w := handlerEnv(t)
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	r, err := New(Config{ServerName: "hs.test"}, pool, syncWriter{w}, slog.New(slog.NewTextHandler(io.Discard, nil)), reg)
	if err != nil {
		t.Fatal(err)
	}
	const room = "!r:hs.test"
	sk := func(s string) *string { return &s }
	ev := func(pos int64, sender, origin, typ string, stateKey *string) kafka.Message {
		return record(t, schema.RoomRecord{V: 1, Kind: schema.KindEvent, Position: pos, RoomID: room, RoomVersion: "10",
			EventID: "$" + string(rune('a'+pos)), Sender: sender, Origin: origin, Type: typ, StateKey: stateKey, PDU: []byte(`{"x": 1}`)})
	}
	delta := func(pos int64, user, membership string) kafka.Message {
		return record(t, schema.RoomRecord{V: 1, Kind: schema.KindStateDelta, Position: pos, RoomID: room, Type: "m.room.member",
			StateKey: sk(user), EventID: "$" + string(rune('a'+pos)), Membership: membership})
	}
	handle := func(h runtime.PartitionHandler, m kafka.Message) {
		t.Helper()
		called := 0
		if err := h.Handle(ctx, m, func() { called++ }); err != nil {
			t.Fatalf("handling %s: %v", m.Value, err)
		}
		if called != 1 {
			t.Fatalf("done called %d times for %s", called, m.Value)
		}
	}
	h, err := r.Open(ctx, "fedpipe.room", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []kafka.Message{
		ev(1, "@a:hs.test", "hs.test", "m.room.member", sk("@a:hs.test")), delta(1, "@a:hs.test", "join"),
		ev(2, "@b:one.test", "one.test", "m.room.member", sk("@b:one.test")), delta(2, "@b:one.test", "join"),
		ev(3, "@c:two.test", "two.test", "m.room.member", sk("@c:two.test")), delta(3, "@c:two.test", "join"),
		ev(4, "@a:hs.test", "hs.test", "m.room.message", nil),
		ev(5, "@a:hs.test", "hs.test", "m.room.member", sk("@c:two.test")), delta(5, "@c:two.test", "leave"), // the kick
	} {
		handle(h, m)
	}
	if got := value(t, r.m.rooms); got != 1 {
		t.Errorf("rooms cached = %v, want 1", got)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := value(t, r.m.rooms); got != 0 {
		t.Errorf("rooms cached after close = %v, want 0", got)
	}
	// The next owner replays from the message, then routes a live message.
	h, err = r.Open(ctx, "fedpipe.room", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []kafka.Message{
		ev(4, "@a:hs.test", "hs.test", "m.room.message", nil),
		ev(5, "@a:hs.test", "hs.test", "m.room.member", sk("@c:two.test")), delta(5, "@c:two.test", "leave"),
		ev(6, "@a:hs.test", "hs.test", "m.room.message", nil),
	} {
		handle(h, m)
	}
	want := []string{"$e one.test", "$e one.test", "$e two.test", "$e two.test", "$f one.test", "$f one.test", "$f two.test", "$f two.test", "$g one.test"}
	if got := written(t, addr); !slices.Equal(got, want) {
		t.Errorf("written %q, want %q", got, want)
	}
	if got := value(t, r.m.rewinds); got != 1 {
		t.Errorf("rewinds = %v, want 1", got)
	}
	var changes int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM router_membership_changes").Scan(&changes); err != nil || changes != 4 {
		t.Errorf("stored changes = %d (%v), want 4", changes, err)
	}

	// A record that cannot be decoded is poison, and the handler goes on.
	err = h.Handle(ctx, kafka.Message{Key: []byte(room), Value: []byte(`{"v":1,"kind":"event","position":7}`)}, func() { t.Error("done called for poison") })
	if !errors.Is(err, runtime.ErrPoison) || !errors.Is(err, schema.ErrInvalidRecord) {
		t.Errorf("undecodable record: %v, want ErrPoison", err)
	}
	if _, err := r.Open(ctx, "other.room", 0); err == nil {
		t.Error("opened a topic the router does not route")
	}
}

// TestHandlerReplayOfBanAndInvite: an event goes to the servers joined before
// it, also when it is replayed after a crash. A local invite of a user whose
// server has no one in the room goes to no extra server; a ban of a server's
// last joined user reaches that server, whose departure the store already holds
// when the ban is replayed. The first replay starts at the ban (its offset not
// committed, its delta stored), the second at the invite before it.
func TestHandlerReplayOfBanAndInvite(t *testing.T) {
	addr, pool, w := handlerEnv(t)
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	r, err := New(Config{ServerName: "hs.test"}, pool, syncWriter{w}, slog.New(slog.NewTextHandler(io.Discard, nil)), reg)
	if err != nil {
		t.Fatal(err)
	}
	const room = "!r:hs.test"
	sk := func(s string) *string { return &s }
	ev := func(pos int64, sender, typ string, stateKey *string) kafka.Message {
		origin, _ := mxid.ServerOf(sender)
		return record(t, schema.RoomRecord{V: 1, Kind: schema.KindEvent, Position: pos, RoomID: room, RoomVersion: "10",
			EventID: "$" + string(rune('a'+pos)), Sender: sender, Origin: origin, Type: typ, StateKey: stateKey, PDU: []byte(`{"x": 1}`)})
	}
	delta := func(pos int64, user, membership string) kafka.Message {
		return record(t, schema.RoomRecord{V: 1, Kind: schema.KindStateDelta, Position: pos, RoomID: room, Type: "m.room.member",
			StateKey: sk(user), EventID: "$" + string(rune('a'+pos)), Membership: membership})
	}
	handle := func(h runtime.PartitionHandler, msgs ...kafka.Message) {
		t.Helper()
		for _, m := range msgs {
			if err := h.Handle(ctx, m, func() {}); err != nil {
				t.Fatalf("handling %s: %v", m.Value, err)
			}
		}
	}
	stream := []kafka.Message{
		ev(1, "@a:hs.test", "m.room.member", sk("@a:hs.test")), delta(1, "@a:hs.test", "join"),
		ev(2, "@b:one.test", "m.room.member", sk("@b:one.test")), delta(2, "@b:one.test", "join"),
		ev(3, "@c:two.test", "m.room.member", sk("@c:two.test")), delta(3, "@c:two.test", "join"),
		ev(4, "@a:hs.test", "m.room.member", sk("@z:new.test")), delta(4, "@z:new.test", "invite"), // $e
		ev(5, "@a:hs.test", "m.room.member", sk("@c:two.test")), delta(5, "@c:two.test", "ban"), // $f
		ev(6, "@a:hs.test", "m.room.message", nil), // $g
	}
	for _, from := range []int{0, 8, 6} { // the whole stream, then from the ban, then from the invite
		h, err := r.Open(ctx, "fedpipe.room", 0)
		if err != nil {
			t.Fatal(err)
		}
		handle(h, stream[from:]...)
		if err := h.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{
		"$e one.test", "$e one.test", "$e two.test", "$e two.test", // the invite, first and from the invite
		"$f one.test", "$f one.test", "$f one.test", "$f two.test", "$f two.test", "$f two.test", // the ban, three times
		"$g one.test", "$g one.test", "$g one.test",
	}
	if got := written(t, addr); !slices.Equal(got, want) {
		t.Errorf("written %q, want %q", got, want)
	}
	if got := value(t, r.m.rewinds); got != 2 {
		t.Errorf("rewinds = %v, want 2", got)
	}
}

func value(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	switch {
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	case d.Counter != nil:
		return d.Counter.GetValue()
	}
	t.Fatalf("not a gauge or counter: %v", m.Desc())
	return 0
}

// TestHandlerKeepsBoundedRooms: a partition keeps at most RoomsPerPartition
// rooms, dropping the least recently used; a dropped room is loaded again
// and routes as before, and a room in the middle of a replay is not dropped.
func TestHandlerKeepsBoundedRooms(t *testing.T) {
	addr, pool, w := handlerEnv(t)
	ctx := context.Background()
	const bound = 10
	r, err := New(Config{ServerName: "hs.test", RoomsPerPartition: bound}, pool, syncWriter{w}, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	h, err := r.Open(ctx, "fedpipe.room", 0)
	if err != nil {
		t.Fatal(err)
	}
	ph := h.(*partitionHandler)
	var pos int64
	sk := func(s string) *string { return &s }
	send := func(room, sender, origin, typ string, stateKey *string, membership string) string {
		t.Helper()
		pos++
		id := fmt.Sprintf("$%d", pos)
		msgs := []kafka.Message{record(t, schema.RoomRecord{V: 1, Kind: schema.KindEvent, Position: pos, RoomID: room, RoomVersion: "10",
			EventID: id, Sender: sender, Origin: origin, Type: typ, StateKey: stateKey, PDU: []byte(`{"x": 1}`)})}
		if stateKey != nil {
			msgs = append(msgs, record(t, schema.RoomRecord{V: 1, Kind: schema.KindStateDelta, Position: pos, RoomID: room, Type: typ,
				StateKey: stateKey, EventID: id, Membership: membership}))
		}
		for _, m := range msgs {
			if err := h.Handle(ctx, m, func() {}); err != nil {
				t.Fatalf("handling %s: %v", m.Value, err)
			}
		}
		if n := len(ph.rooms); n > bound {
			t.Fatalf("%d rooms in memory, bound %d", n, bound)
		}
		return id
	}
	var want []string
	const rooms = 3 * bound
	for i := range rooms {
		room, remote := fmt.Sprintf("!r%d:hs.test", i), fmt.Sprintf("@u:s%d.test", i)
		send(room, "@a:hs.test", "hs.test", "m.room.member", sk("@a:hs.test"), "join")
		send(room, remote, fmt.Sprintf("s%d.test", i), "m.room.member", sk(remote), "join")
	}
	// Every room was dropped at least once by now; each routes as before.
	for i := range rooms {
		id := send(fmt.Sprintf("!r%d:hs.test", i), "@a:hs.test", "hs.test", "m.room.message", nil, "")
		want = append(want, fmt.Sprintf("%s s%d.test", id, i))
	}
	slices.Sort(want)
	if got := written(t, addr); !slices.Equal(got, want) {
		t.Errorf("written %q, want %q", got, want)
	}
	if got := value(t, r.m.rooms); got != float64(len(ph.rooms)) || got > bound {
		t.Errorf("rooms gauge %v, %d in memory, bound %d", got, len(ph.rooms), bound)
	}
	if got := value(t, r.m.evicted); got < rooms {
		t.Errorf("%v rooms evicted, want at least %d", got, rooms)
	}

	// A replayed member event rewinds !r0 (memory behind the store): loading
	// other rooms does not drop it until its deltas caught up.
	replayed := record(t, schema.RoomRecord{V: 1, Kind: schema.KindEvent, Position: 2, RoomID: "!r0:hs.test", RoomVersion: "10",
		EventID: "$2", Sender: "@u:s0.test", Origin: "s0.test", Type: "m.room.member", StateKey: sk("@u:s0.test"), PDU: []byte(`{"x": 1}`)})
	if err := h.Handle(ctx, replayed, func() {}); err != nil {
		t.Fatal(err)
	}
	if rm := ph.rooms["!r0:hs.test"]; rm == nil || rm.pos.Applied >= rm.pos.Stored {
		t.Fatalf("!r0 not rewound: %+v", rm)
	}
	for i := 1; i <= 2*bound; i++ {
		send(fmt.Sprintf("!r%d:hs.test", i), "@a:hs.test", "hs.test", "m.room.message", nil, "")
	}
	if ph.rooms["!r0:hs.test"] == nil {
		t.Error("a room in the middle of a replay was dropped")
	}
}
