package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/producers/relay"
	"github.com/fedpipe/fedpipe/schema"
)

// runRelay runs a relay with the given round bound until the test ends, and
// returns its metrics registry.
func runRelay(t *testing.T, e *env, maxRoundBytes int) *prometheus.Registry {
	t.Helper()
	w := func(topic string) *kafka.Writer {
		return &kafka.Writer{Addr: kafka.TCP(e.addr), Topic: topic, RequiredAcks: kafka.RequireAll, Balancer: &kafka.Murmur2Balancer{},
			BatchTimeout: time.Millisecond, BatchSize: 1 << 20, BatchBytes: 1 << 20}
	}
	room, state := w(e.room), w(e.state)
	reg := prometheus.NewRegistry()
	r, err := relay.New(relay.Config{Instance: "test", PollInterval: 10 * time.Millisecond, MaxRoundBytes: maxRoundBytes, RetryDelay: 50 * time.Millisecond},
		e.pool, room, state, slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { room.Close(); state.Close() }) // after the relay stops: cleanups run last first
	testenv.Background(t, "relay", r.Run)
	return reg
}

// positions decodes the room records' stream positions in topic order (one
// room, so one partition).
func positions(t *testing.T, msgs []kafka.Message) []int64 {
	t.Helper()
	var out []int64
	for _, m := range msgs {
		rec, err := schema.DecodeRoomRecord(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Kind == schema.KindEvent {
			out = append(out, rec.Position)
		}
	}
	return out
}

// A round bounded by MaxRoundBytes fits a topic whose max.message.bytes is
// just above it: the broker measures the whole record batch (header and
// per-record overhead included), and the relay's estimate must cover that,
// or every round of a busy room would be refused and the relay would stall.
func TestRoundsFitTheTopicsMaxMessageBytes(t *testing.T) {
	const limit = 4096
	e := setup(t, map[string]string{"max.message.bytes": fmt.Sprint(limit)})
	ctx := context.Background()
	var events []outbox.EventWithDeltas
	for i := 0; i < 80; i++ {
		events = append(events, ev("!aa:hs.test", i, "")) // one room: every record in one partition's batch
	}
	if _, err := outbox.PersistBatch(ctx, e.pool, events); err != nil {
		t.Fatal(err)
	}
	reg := runRelay(t, e, limit-61) // the v2 batch header is 61 bytes
	msgs := readAll(t, e.addr, e.room, 80)
	if len(msgs) != 80 {
		t.Fatalf("%d room records published (%d failed rounds), want 80", len(msgs), int(testenv.Value(t, reg, "fedpipe_relay_failures_total")))
	}
	if n := testenv.Value(t, reg, "fedpipe_relay_failures_total"); n != 0 {
		t.Fatalf("%v rounds refused: the round estimate undercounts what the broker measures", n)
	}
}

// One record larger than the room topic's max.message.bytes is refused by the
// broker (MESSAGE_TOO_LARGE). A relay without a dead-letter topic (the CLI
// always gives it one: then the record is dead-lettered, oversize_test.go)
// must not skip it nor publish past it: it publishes what comes before, stores
// its position before the refused record and stops with an error naming it;
// started again once the operator raises the topic's limit, it publishes the
// rest in order, each record once.
func TestRecordOverMaxMessageBytesStopsARelayWithoutDeadLetters(t *testing.T) {
	e := setup(t, map[string]string{"max.message.bytes": "4096"})
	ctx := context.Background()
	var events []outbox.EventWithDeltas
	for i := 0; i < 7; i++ {
		events = append(events, ev("!aa:hs.test", i, ""))
	}
	events[3].PDU = json.RawMessage(fmt.Sprintf(`{"n":3,"body":%q}`, strings.Repeat("x", 6000)))
	pos, err := outbox.PersistBatch(ctx, e.pool, events)
	if err != nil {
		t.Fatal(err)
	}
	runErr := runRelayUntilError(t, e, 3000)
	select {
	case err := <-runErr:
		if err == nil || !strings.Contains(err.Error(), "dead-letter") {
			t.Fatalf("relay stopped with %v, want an error saying the record cannot be dead-lettered", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the relay neither published past the refused record nor stopped")
	}
	if got := positions(t, readAll(t, e.addr, e.room, 3)); fmt.Sprint(got) != fmt.Sprint(pos[:3]) {
		t.Fatalf("published %v while the record at %d is refused, want exactly the three before it %v", got, pos[3], pos[:3])
	}
	var stored int64
	if err := e.pool.QueryRow(ctx, "SELECT position FROM relay_positions WHERE stream = 'events'").Scan(&stored); err != nil || stored != pos[2] {
		t.Fatalf("stored position %d (%v), want %d: held before the refused record", stored, err, pos[2])
	}
	e.k.AlterTopicConfig(t, e.room, map[string]string{"max.message.bytes": "65536"})
	runRelay(t, e, 3000)
	msgs := readAll(t, e.addr, e.room, 7)
	if got := positions(t, msgs); fmt.Sprint(got) != fmt.Sprint(pos) {
		t.Fatalf("after raising the limit the room topic holds %v, want %v in order, once each", got, pos)
	}
}

// runRelayUntilError runs a relay without a dead-letter topic and reports how
// its Run ended.
func runRelayUntilError(t *testing.T, e *env, maxRoundBytes int) <-chan error {
	t.Helper()
	w := func(topic string) *kafka.Writer {
		return &kafka.Writer{Addr: kafka.TCP(e.addr), Topic: topic, RequiredAcks: kafka.RequireAll, Balancer: &kafka.Murmur2Balancer{},
			BatchTimeout: time.Millisecond, BatchSize: 1 << 20, BatchBytes: 1 << 20}
	}
	room, state := w(e.room), w(e.state)
	r, err := relay.New(relay.Config{Instance: "test", PollInterval: 10 * time.Millisecond, MaxRoundBytes: maxRoundBytes, RetryDelay: 50 * time.Millisecond},
		e.pool, room, state, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan error, 1)
	go func() { out <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); room.Close(); state.Close() })
	return out
}
