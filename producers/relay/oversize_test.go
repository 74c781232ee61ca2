package relay_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/relay"
	"github.com/fedpipe/fedpipe/schema"
)

// TestRecordsTooLargeToPublishAreDeadLettered: an event row and a presence row
// whose records are over the writer's 1 MiB limit (written by a homeserver or
// an older presence stage, past the outbox's checks) used to fail every round
// for ever, holding back every later row. They go to the dead-letter topic and
// the rows after them are published.
func TestRecordsTooLargeToPublishAreDeadLettered(t *testing.T) {
	c, addr := testenv.Broker(t)
	for _, tp := range []string{"fedpipe.room", "fedpipe.state", "fedpipe.presence", "fedpipe.deadletter"} {
		if err := c.CreateTopic(tp, 1, nil); err != nil {
			t.Fatal(err)
		}
	}
	pool := testenv.Pool(t, testenv.Database(t))
	ctx := context.Background()
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	huge := strings.Repeat("x", 1200<<10)
	insertEvent := func(id, body string) {
		t.Helper()
		if _, err := pool.Exec(ctx, `INSERT INTO events (event_id, room_id, room_version, sender, origin, type, json)
			VALUES ($1, '!r:hs.test', '10', '@a:hs.test', 'hs.test', 'm.room.message', $2)`, id, `{"body":"`+body+`"}`); err != nil {
			t.Fatal(err)
		}
	}
	insertPresence := func(user, msg string) {
		t.Helper()
		if _, err := pool.Exec(ctx, `INSERT INTO presence_stream (stream_id, user_id, state, status_msg, last_active_ts, currently_active)
			VALUES (fedpipe_next_stream_ordering(), $1, 'online', $2, 1, true)`, user, msg); err != nil {
			t.Fatal(err)
		}
	}
	insertEvent("$before", "small")
	insertPresence("@huge:hs.test", huge)
	insertEvent("$huge", huge)
	insertPresence("@small:hs.test", "hi")
	insertEvent("$after", "small")

	room, state := kafkaio.NewPartitionWriter([]string{addr}, "fedpipe.room"), kafkaio.NewPartitionWriter([]string{addr}, "fedpipe.state")
	presence, dead := kafkaio.NewPartitionWriter([]string{addr}, "fedpipe.presence"), kafkaio.NewWriter([]string{addr}, "fedpipe.deadletter")
	defer func() { room.Close(); state.Close(); presence.Close(); dead.Close() }()
	reg := prometheus.NewRegistry()
	r, err := relay.New(relay.Config{Instance: "test", PollInterval: 10 * time.Millisecond}, pool, room, state, slog.New(slog.DiscardHandler), reg,
		relay.WithPresence(presence), relay.WithDeadLetters(dead))
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- r.Run(rctx) }()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("relay: %v", err)
		}
	}()

	var roomIDs []string
	testenv.Eventually(t, 20*time.Second, "the rows after the large ones published", func() bool {
		roomIDs = roomIDs[:0]
		for _, m := range readAll(t, addr, "fedpipe.room", 2) {
			rec, err := schema.DecodeRoomRecord(m.Value)
			if err != nil {
				t.Fatal(err)
			}
			roomIDs = append(roomIDs, rec.EventID)
		}
		return len(roomIDs) == 2 && len(readAll(t, addr, "fedpipe.presence", 1)) == 1
	})
	if roomIDs[0] != "$before" || roomIDs[1] != "$after" {
		t.Errorf("room topic holds %v, want $before then $after", roomIDs)
	}
	deadLetters := readAll(t, addr, "fedpipe.deadletter", 2)
	targets := map[string]bool{}
	for _, m := range deadLetters {
		h := map[string]string{}
		for _, x := range m.Headers {
			h[x.Key] = string(x.Value)
		}
		targets[h["source_topic"]] = true
		if h["deadletter_writer"] != "relay" || !strings.Contains(h["deadletter_reason"], "Too Large") || len(m.Value) != kafkaio.MaxDeadLetterValueBytes {
			t.Errorf("dead letter with headers %v and %d bytes", h, len(m.Value))
		}
	}
	if len(deadLetters) != 2 || !targets["fedpipe.room"] || !targets["fedpipe.presence"] {
		t.Errorf("dead letters for %v, want one for fedpipe.room and one for fedpipe.presence", targets)
	}
}

// TestRecordTooLargeWithoutDeadLettersStopsTheRelay: with nowhere to put it,
// the relay stops with the refusal rather than retrying it for ever.
func TestRecordTooLargeWithoutDeadLettersStopsTheRelay(t *testing.T) {
	c, addr := testenv.Broker(t)
	for _, tp := range []string{"fedpipe.room", "fedpipe.state"} {
		if err := c.CreateTopic(tp, 1, nil); err != nil {
			t.Fatal(err)
		}
	}
	pool := testenv.Pool(t, testenv.Database(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO events (event_id, room_id, room_version, sender, origin, type, json)
		VALUES ('$huge', '!r:hs.test', '10', '@a:hs.test', 'hs.test', 'm.room.message', $1)`, `{"body":"`+strings.Repeat("x", 1200<<10)+`"}`); err != nil {
		t.Fatal(err)
	}
	room, state := kafkaio.NewPartitionWriter([]string{addr}, "fedpipe.room"), kafkaio.NewPartitionWriter([]string{addr}, "fedpipe.state")
	defer func() { room.Close(); state.Close() }()
	r, err := relay.New(relay.Config{Instance: "test", PollInterval: 10 * time.Millisecond}, pool, room, state, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run(ctx); !errors.Is(err, kafkaio.ErrNoDeadLetters) || !errors.Is(err, kafka.MessageSizeTooLarge) {
		t.Fatalf("Run returned %v, want the refusal", err)
	}
}
