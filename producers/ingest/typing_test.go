package ingest_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/ingest"
	"github.com/fedpipe/fedpipe/schema"
)

// PUT /_fedpipe/v1/rooms/{roomId}/typing/{userId} writes one typing record
// (timeout defaulted and capped) keyed by the room; bad input is 400 naming
// the field and writes nothing; without a writer the route is 404.
func TestTypingRoute(t *testing.T) {
	cluster, addr := testenv.Broker(t)
	if err := cluster.CreateTopic("fedpipe.typing", 1, nil); err != nil {
		t.Fatal(err)
	}
	w := kafkaio.NewWriter([]string{addr}, "fedpipe.typing")
	t.Cleanup(func() { w.Close() })
	s := start(t, ingest.Config{ServerName: "hs.test", Typing: w})
	base := strings.TrimSuffix(s.url, ingest.Path)
	path := func(room, user string) string { return base + "/_fedpipe/v1/rooms/" + room + "/typing/" + user }
	for _, tc := range []struct {
		name, url, body, errcode, inText string
		status                           int
	}{
		{"remote user", path("!r:hs.test", "@eve:evil.test"), `{"typing":true}`, "M_INVALID_PARAM", "user_id", 400},
		{"not a room", path("r", "@a:hs.test"), `{"typing":true}`, "M_INVALID_PARAM", "room_id", 400},
		{"typing missing", path("!r:hs.test", "@a:hs.test"), `{"timeout":5}`, "M_BAD_JSON", "typing", 400},
		{"typing a string", path("!r:hs.test", "@a:hs.test"), `{"typing":"yes"}`, "M_BAD_JSON", "typing", 400},
		{"negative timeout", path("!r:hs.test", "@a:hs.test"), `{"typing":true,"timeout":-1}`, "M_INVALID_PARAM", "timeout", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := request(t, http.MethodPut, tc.url, tc.body, "")
			if a.status != tc.status || a.ErrCode != tc.errcode || !strings.Contains(a.Error, tc.inText) {
				t.Fatalf("answered %d %s %q, want %d %s naming %s", a.status, a.ErrCode, a.Error, tc.status, tc.errcode, tc.inText)
			}
		})
	}
	for _, body := range []string{`{"typing":true,"timeout":600000}`, `{"typing":true}`, `{"typing":false}`} {
		if a := request(t, http.MethodPut, path("!r:hs.test", "@a:hs.test"), body, ""); a.status != http.StatusOK {
			t.Fatalf("%s answered %d %s", body, a.status, a.Error)
		}
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: "fedpipe.typing", Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var msgs []kafka.Message
	for len(msgs) < 3 {
		m, err := r.ReadMessage(ctx) // a partition reader: nothing to commit
		if err != nil {
			t.Fatalf("reading the typing topic after %d records: %v", len(msgs), err)
		}
		msgs = append(msgs, m)
	}
	var timeouts []int64
	for _, m := range msgs {
		var r schema.TypingRecord
		if err := json.Unmarshal(m.Value, &r); err != nil || string(m.Key) != "!r:hs.test" {
			t.Fatalf("record %s keyed %s: %v", m.Value, m.Key, err)
		}
		if err := schema.ValidateRecord("typing", m.Value); err != nil {
			t.Fatal(err)
		}
		if time.Since(time.UnixMilli(r.TS)) > time.Minute {
			t.Fatalf("ts %d", r.TS)
		}
		timeouts = append(timeouts, r.TimeoutMS)
	}
	if len(timeouts) != 3 || timeouts[0] != 120000 || timeouts[1] != 30000 || timeouts[2] != 0 {
		t.Fatalf("timeouts %v, want [120000 30000 0]: capped, defaulted, none when stopping", timeouts)
	}
	off := start(t, ingest.Config{ServerName: "hs.test"})
	if a := request(t, http.MethodPut, strings.TrimSuffix(off.url, ingest.Path)+"/_fedpipe/v1/rooms/!r:hs.test/typing/@a:hs.test", `{"typing":true}`, ""); a.status != http.StatusNotFound {
		t.Fatalf("without a writer: %d", a.status)
	}
}
