package relay_test

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/producers/relay"
	"github.com/fedpipe/fedpipe/schema"
)

// ack is a record the broker acknowledged.
type ack struct {
	kind     string
	position int64
}

// ackLog lists the records written through its writers in the order the
// broker acknowledged them.
type ackLog struct {
	mu   sync.Mutex
	acks []ack
}

// writer returns a writer for topic that logs what the broker acknowledged.
func (l *ackLog) writer(addr, topic string) *loggingWriter {
	return &loggingWriter{log: l, w: &kafka.Writer{Addr: kafka.TCP(addr), Topic: topic, RequiredAcks: kafka.RequireAll, Balancer: &kafka.Murmur2Balancer{},
		BatchTimeout: time.Millisecond, MaxAttempts: 2, WriteBackoffMin: 10 * time.Millisecond, WriteBackoffMax: 50 * time.Millisecond}}
}

func (l *ackLog) snapshot() []ack {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]ack(nil), l.acks...)
}

// loggingWriter is a real writer that logs each record once the broker has
// acknowledged it.
type loggingWriter struct {
	log *ackLog
	w   *kafka.Writer
}

func (lw *loggingWriter) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	if err := lw.w.WriteMessages(ctx, msgs...); err != nil {
		return err
	}
	lw.log.mu.Lock()
	defer lw.log.mu.Unlock()
	for _, m := range msgs {
		a := ack{}
		for _, h := range m.Headers {
			switch h.Key {
			case schema.HeaderKind:
				a.kind = string(h.Value)
			case schema.HeaderPosition:
				a.position, _ = strconv.ParseInt(string(h.Value), 10, 64)
			}
		}
		lw.log.acks = append(lw.log.acks, a)
	}
	return nil
}

// upsertPresence writes user's presence to presence_stream at the next stream
// position, as the presence stage does, and returns the position.
func upsertPresence(t *testing.T, e *env, user, state string) int64 {
	t.Helper()
	var pos int64
	err := e.pool.QueryRow(context.Background(), `INSERT INTO presence_stream (stream_id, user_id, state, status_msg, last_active_ts, currently_active)
		VALUES (fedpipe_next_stream_ordering(), $1, $2, NULL, 1, $2 = 'online')
		ON CONFLICT (user_id) DO UPDATE SET stream_id = EXCLUDED.stream_id, state = EXCLUDED.state RETURNING stream_id`, user, state).Scan(&pos)
	if err != nil {
		t.Fatal(err)
	}
	return pos
}

// checkRoomFirst fails the test when a presence record was acknowledged before
// an event of a lower position: the relay's ordering rule.
func checkRoomFirst(t *testing.T, acks []ack, events []int64) {
	t.Helper()
	done := map[int64]bool{}
	presence := 0
	for _, a := range acks {
		switch a.kind {
		case schema.KindEvent:
			done[a.position] = true
		case schema.KindPresence:
			presence++
			for _, p := range events {
				if p < a.position && !done[p] {
					t.Fatalf("presence at %d published before the event at %d", a.position, p)
				}
			}
		}
	}
	if presence == 0 {
		t.Fatal("no presence record published")
	}
}

// runOrdered runs a relay publishing room and presence through log's writers
// until the test ends, and returns its metrics.
func runOrdered(t *testing.T, e *env, log *ackLog, room string, maxRoundBytes int) *prometheus.Registry {
	t.Helper()
	rw, sw, pw := log.writer(e.addr, room), log.writer(e.addr, e.state), log.writer(e.addr, e.k.Topic("presence"))
	reg := prometheus.NewRegistry()
	r, err := relay.New(relay.Config{Instance: "test", PollInterval: 10 * time.Millisecond, BatchSize: 7, RetryDelay: 20 * time.Millisecond, MaxRoundBytes: maxRoundBytes},
		e.pool, rw, sw, slog.New(slog.DiscardHandler), reg, relay.WithPresence(pw))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rw.w.Close(); sw.w.Close(); pw.w.Close() }) // after the relay stops: cleanups run last first
	testenv.Background(t, "relay", r.Run)
	return reg
}

// Events and presence interleaved in the stream: every presence record reaches
// Kafka after every event below its position, across batches (BatchSize 7).
func TestPresenceIsPublishedAfterTheRoomRecordsBelowIt(t *testing.T) {
	e := setup(t, nil)
	ctx := context.Background()
	var events []int64
	var last int64
	for i := range 40 {
		if i%3 == 0 {
			last = upsertPresence(t, e, fmt.Sprintf("@u%d:hs.test", i%4), []string{"online", "unavailable"}[i%2])
			continue
		}
		member := ""
		if i%5 == 0 {
			member = fmt.Sprintf("@m%d:remote.test", i)
		}
		pos, err := outbox.PersistBatch(ctx, e.pool, []outbox.EventWithDeltas{ev(fmt.Sprintf("!r%d:hs.test", i%3), i, member)})
		if err != nil {
			t.Fatal(err)
		}
		events = append(events, pos[0])
	}
	var log ackLog
	reg := runOrdered(t, e, &log, e.room, 0)
	testenv.Eventually(t, 20*time.Second, "the presence stream published", func() bool {
		return storedPosition(t, e.pool, "presence") >= last
	})
	checkRoomFirst(t, log.snapshot(), events)

	// The metrics, by stream, and presence's under their former names too.
	for _, m := range []struct {
		name, stream string
		want         float64
	}{
		{"fedpipe_relay_records_published_total", "events", 31},  // 26 events, 5 deltas
		{"fedpipe_relay_records_published_total", "presence", 4}, // the latest of each of 4 users
		{"fedpipe_relay_presence_published_total", "", 4},
		{"fedpipe_relay_position", "presence", float64(last)},
		{"fedpipe_relay_presence_position", "", float64(last)},
		{"fedpipe_relay_position", "events", float64(last)}, // the round's end, past the last event
	} {
		if got := metricValue(t, reg, m.name, m.stream); got != m.want {
			t.Errorf("%s{stream=%q} = %v, want %v", m.name, m.stream, got, m.want)
		}
	}
}

// metricValue reads the counter, gauge or histogram sample count name{stream} (no label when stream
// is empty) from reg, failing the test when it is missing.
func metricValue(t *testing.T, reg *prometheus.Registry, name, stream string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			label := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "stream" {
					label = l.GetValue()
				}
			}
			if label == stream {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	t.Fatalf("no metric %s{stream=%q}", name, stream)
	return 0
}

// While the room records below a presence cannot be published (the room topic
// does not exist yet), the presence is not published either; once they are,
// it follows them.
func TestPresenceWaitsForRoomRecordsBelowIt(t *testing.T) {
	e := setup(t, nil)
	ctx := context.Background()
	pos, err := outbox.PersistBatch(ctx, e.pool, []outbox.EventWithDeltas{ev("!held:hs.test", 1, "")})
	if err != nil {
		t.Fatal(err)
	}
	upsertPresence(t, e, "@u:hs.test", "online")
	var log ackLog
	reg := runOrdered(t, e, &log, e.k.Topic("room-later"), 0)
	testenv.Eventually(t, 20*time.Second, "two failed rounds", func() bool {
		return testenv.Value(t, reg, "fedpipe_relay_failures_total") >= 2
	})
	if n := topicCount(t, e.addr, e.k.Topic("presence")); n != 0 {
		t.Fatalf("%d presence records published while the event below them is not", n)
	}
	var stored int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM relay_positions WHERE stream = 'presence'`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored != 0 {
		t.Fatal("presence position stored while the event below it is not published")
	}
	e.k.CreateTopic(t, "room-later", 4, nil)
	testenv.Eventually(t, 30*time.Second, "the presence published once the room topic exists", func() bool {
		return topicCount(t, e.addr, e.k.Topic("presence")) == 1
	})
	checkRoomFirst(t, log.snapshot(), pos)
}
