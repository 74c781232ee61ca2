package ingest_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/ingest"
	"github.com/fedpipe/fedpipe/producers/relay"
	"github.com/fedpipe/fedpipe/schema"
)

// TestIngestedBytesReachKafkaUntouched follows events from the HTTP body to
// the room and state topics: the PDU bytes a homeserver sent (odd spacing,
// escapes, HTML characters) are the bytes consumers read, and every record
// passes its JSON Schema.
func TestIngestedBytesReachKafkaUntouched(t *testing.T) {
	cluster, addr := testenv.Broker(t)
	for _, topic := range []string{"fedpipe.room", "fedpipe.state"} {
		if err := cluster.CreateTopic(topic, 3, nil); err != nil {
			t.Fatal(err)
		}
	}
	s := start(t, ingest.Config{})
	member := `{"room_id":"!r:hs.test",  "sender":"@alice:hs.test","type":"m.room.member","state_key":"@bob:remote.test",` + "\n" +
		`"content":{"membership":"join","displayname":"B\u00f6b <b>&amp;</b>","n":1.50}}`
	message := `{ "room_id" : "!r:hs.test", "sender":"@alice:hs.test", "type":"m.room.message", "content":{"body":"\ud83d\ude00 < > &"} }`
	body := fmt.Sprintf(`{"events":[{"room_version":"10","event_id":%q,"pdu":%s,
		"state_deltas":[{"type":"m.room.member","state_key":"@bob:remote.test","event_id":%q,"prev_event_id":%q,"membership":"join","prev_membership":"invite"}]},
		{"room_version":"10","event_id":%q,"pdu":%s}]}`, eventID(1), member, eventID(1), eventID(9), eventID(2), message)
	a := s.post(t, body, "")
	if a.status != http.StatusOK {
		t.Fatalf("ingest: %+v", a)
	}

	writer := func(topic string) *kafka.Writer {
		return &kafka.Writer{Addr: kafka.TCP(addr), Topic: topic, RequiredAcks: kafka.RequireAll, Balancer: &kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond}
	}
	room, state := writer("fedpipe.room"), writer("fedpipe.state")
	defer room.Close()
	defer state.Close()
	rl, err := relay.New(relay.Config{Instance: "ingest-test", PollInterval: 10 * time.Millisecond}, s.pool, room, state, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return rl.Run(gctx) })
	defer func() {
		cancel()
		if err := g.Wait(); err != nil {
			t.Errorf("relay: %v", err)
		}
	}()

	roomMsgs := consume(t, addr, "fedpipe.room", "!r:hs.test", 3)
	kinds := []string{schema.KindEvent, schema.KindStateDelta, schema.KindEvent}
	pdus := []string{member, "", message}
	for i, m := range roomMsgs {
		if err := schema.ValidateRecord("room", m.Value); err != nil {
			t.Fatalf("room record %d fails its schema: %v\n%s", i, err, m.Value)
		}
		rec, err := schema.DecodeRoomRecord(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Kind != kinds[i] || string(m.Key) != "!r:hs.test" {
			t.Fatalf("room record %d: kind %s key %s, want %s keyed by the room", i, rec.Kind, m.Key, kinds[i])
		}
		if string(rec.PDU) != pdus[i] {
			t.Fatalf("room record %d carries pdu\n%s\nwant the ingested bytes\n%s", i, rec.PDU, pdus[i])
		}
		if rec.Kind == schema.KindEvent && !strings.Contains(string(m.Value), `"pdu":`+pdus[i]) {
			t.Fatalf("record value does not embed the PDU bytes verbatim: %s", m.Value)
		}
	}
	stateMsgs := consume(t, addr, "fedpipe.state", string(schema.StateKey("!r:hs.test", "m.room.member", "@bob:remote.test")), 1)
	if err := schema.ValidateRecord("state", stateMsgs[0].Value); err != nil {
		t.Fatalf("state record fails its schema: %v", err)
	}
	d, err := schema.DecodeRoomRecord(stateMsgs[0].Value)
	if err != nil || d.EventID != eventID(1) || d.PrevEventID != eventID(9) || d.Membership != "join" || d.PrevMembership != "invite" || d.Position != a.Positions[0] {
		t.Fatalf("state record %+v (%v), want the ingested delta at position %d", d, err, a.Positions[0])
	}
}

// consume reads the records with key from every partition of topic until n
// have arrived.
func consume(t *testing.T, addr, topic, key string, n int) []kafka.Message {
	t.Helper()
	conn, err := kafka.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	var out []kafka.Message
	readers := make([]*kafka.Reader, len(parts))
	for i, p := range parts {
		readers[i] = kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: topic, Partition: p.ID, MaxWait: 500 * time.Millisecond})
		defer readers[i].Close()
	}
	testenv.Eventually(t, 15*time.Second, fmt.Sprintf("%d records keyed %s on %s", n, key, topic), func() bool {
		for _, r := range readers {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			for {
				m, err := r.FetchMessage(ctx)
				if err != nil {
					break
				}
				if string(m.Key) == key {
					out = append(out, m)
				}
			}
			cancel()
		}
		return len(out) >= n
	})
	if len(out) != n {
		t.Fatalf("%d records keyed %s on %s, want %d", len(out), key, topic, n)
	}
	return out
}
