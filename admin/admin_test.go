package admin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/admin"
	"github.com/fedpipe/fedpipe/consumers/sender"
	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

const token = "s3cret"

// env is a running admin API on a real broker and database.
type env struct {
	t       *testing.T
	url     string
	pool    *pgxpool.Pool
	brokers []string
	reg     *prometheus.Registry
	// routes are the routes the handler serves ("METHOD path").
	routes []string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	_, addr := testenv.Broker(t)
	brokers := []string{addr}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := kafkaio.CreateTopics(ctx, brokers, kafkaio.TopicsConfig{Prefix: "fp", Partitions: 2, OutboundPartitions: 2, ReplicationFactor: 1}, log); err != nil {
		t.Fatal(err)
	}
	pool := testenv.Pool(t, testenv.Database(t))
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	srv, err := admin.New(admin.Config{Token: token, Brokers: brokers, Stages: []string{"router"}, Instance: "test", ServerName: "hs.test",
		Groups:          []admin.Group{{ID: "fp-router", Topics: []string{"fp.room", "fp.presence"}}},
		DeadLetterTopic: "fp.deadletter", RedriveTopics: []string{"fp.room", "fp.usersync"},
		RoomTopic: "fp.room", RouterGroup: "fp-router", MaxWait: time.Minute}, pool, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	h := srv.Handler()
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	return &env{t: t, url: hs.URL, pool: pool, brokers: brokers, reg: reg, routes: h.(interface{ Routes() []string }).Routes()}
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.pool.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// call makes a request with the good token and decodes a JSON answer.
func (e *env) call(method, path, body string) (int, map[string]any) {
	e.t.Helper()
	return e.callAs("Bearer "+token, method, path, body)
}

func (e *env) callAs(auth, method, path, body string) (int, map[string]any) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &out); err != nil {
			e.t.Fatalf("%s %s: %d %q is not JSON: %v", method, path, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode, out
}

// wantError checks a Synapse-shaped error answer.
func (e *env) wantError(method, path, body string, status int, errcode string) {
	e.t.Helper()
	code, out := e.call(method, path, body)
	if code != status || out["errcode"] != errcode || out["error"] == "" {
		e.t.Errorf("%s %s %s: %d %v, want %d with errcode %s", method, path, body, code, out, status, errcode)
	}
}

const syn = "/_synapse/admin/v1/federation/destinations"

// seed: a.test healthy with a success, b.test backing off 20 min since an
// hour ago, c.test backing off 10 min, d.test known only by its catch-up.
func (e *env) seed() {
	e.exec(`INSERT INTO sender_destinations (destination, retry_interval_ms, next_attempt_ms, failure_ts, last_successful_position, retry_last_ts) VALUES
		('a.test', 0, 0, NULL, 40, 0),
		('b.test', 1200000, 9000000000000, 1000, 7, 5000),
		('c.test', 600000, 9000000000000, 2000, NULL, 6000)`)
	e.exec(`INSERT INTO sender_catchup (destination, room_id, position, event_id) VALUES
		('b.test', '!r1:x', 11, '$1'), ('b.test', '!r2:x', 12, '$2'), ('b.test', '!r3:x', 13, '$3'), ('d.test', '!r1:x', 9, '$9')`)
}

func names(out map[string]any) []string {
	var n []string
	for _, d := range out["destinations"].([]any) {
		n = append(n, d.(map[string]any)["destination"].(string))
	}
	return n
}

func TestEveryRouteWantsTheToken(t *testing.T) {
	e := newEnv(t)
	// Every route the handler serves, as its mux registered them.
	query := map[string]string{"/_fedpipe/admin/v1/wait_for_position": "?stream=events&position=0"}
	var routes []struct{ method, path string }
	for _, route := range e.routes {
		method, path, _ := strings.Cut(route, " ")
		path = strings.ReplaceAll(strings.ReplaceAll(path, "{destination}", "a.test"), "{profile}", "heap") + query[path]
		if strings.Contains(path, "{") {
			t.Fatalf("route %s: no value for its parameter here", route)
		}
		routes = append(routes, struct{ method, path string }{method, path})
	}
	if len(routes) < 12 {
		t.Fatalf("the handler lists %d routes: %v", len(routes), e.routes)
	}
	for _, r := range routes {
		for _, c := range []struct{ auth, errcode string }{{"", "M_MISSING_TOKEN"}, {"Bearer guess", "M_UNKNOWN_TOKEN"}, {"Basic czNjcmV0", "M_MISSING_TOKEN"}} {
			code, out := e.callAs(c.auth, r.method, r.path, "")
			if code != http.StatusUnauthorized || out["errcode"] != c.errcode {
				t.Errorf("%s %s with %q: %d %v, want 401 %s", r.method, r.path, c.auth, code, out, c.errcode)
			}
		}
		if code, _ := e.call(r.method, r.path, ""); code == http.StatusUnauthorized || code == http.StatusNotFound && r.path == "/" {
			t.Errorf("%s %s with the token: %d", r.method, r.path, code)
		}
	}
	// The access_token query parameter (which Synapse accepts too) opens the page in a browser.
	if code, _ := e.callAs("", "GET", "/?access_token="+token, ""); code != http.StatusOK {
		t.Errorf("the status page with ?access_token: %d", code)
	}
	if code, _ := e.callAs("", "GET", "/?access_token=guess", ""); code != http.StatusUnauthorized {
		t.Errorf("the status page with a wrong ?access_token: %d", code)
	}
	e.wantError("GET", "/_synapse/admin/v1/nothing", "", http.StatusNotFound, "M_UNRECOGNIZED")
	e.wantError("DELETE", syn+"/a.test", "", http.StatusMethodNotAllowed, "M_UNRECOGNIZED")
	e.wantError("POST", "/_fedpipe/admin/v1/status", "", http.StatusMethodNotAllowed, "M_UNRECOGNIZED")
}

func TestListDestinationsAsSynapse(t *testing.T) {
	e := newEnv(t)
	code, out := e.call("GET", syn, "")
	if code != 200 || out["total"] != 0.0 || len(out["destinations"].([]any)) != 0 || out["next_token"] != nil {
		t.Fatalf("empty: %d %v", code, out)
	}
	e.seed()
	for _, c := range []struct {
		query string
		want  []string
		next  any
	}{
		{"", []string{"a.test", "b.test", "c.test", "d.test"}, nil},
		{"?dir=b", []string{"d.test", "c.test", "b.test", "a.test"}, nil},
		{"?order_by=retry_interval&dir=b", []string{"b.test", "c.test", "a.test", "d.test"}, nil},
		{"?order_by=failure_ts", []string{"b.test", "c.test", "a.test", "d.test"}, nil},
		{"?order_by=retry_last_ts&dir=b", []string{"c.test", "b.test", "a.test", "d.test"}, nil},
		{"?order_by=last_successful_stream_ordering", []string{"b.test", "a.test", "c.test", "d.test"}, nil},
		{"?order_by=destination&limit=2", []string{"a.test", "b.test"}, "2"},
		{"?from=2&limit=1", []string{"c.test"}, "3"},
		{"?from=3&limit=5", []string{"d.test"}, nil},
		{"?destination=B.TE", []string{"b.test"}, nil},
		{"?destination=%25", nil, nil}, // a literal %, not a wildcard
	} {
		code, out := e.call("GET", syn+c.query, "")
		if code != 200 {
			t.Fatalf("%s: %d %v", c.query, code, out)
		}
		if got := names(out); !slices.Equal(got, c.want) || out["next_token"] != c.next {
			t.Errorf("%s: %v next_token %v, want %v %v", c.query, got, out["next_token"], c.want, c.next)
		}
	}
	_, out = e.call("GET", syn+"?limit=1", "")
	if out["total"] != 4.0 {
		t.Errorf("total %v, want 4", out["total"])
	}
	b := out["destinations"].([]any)[0].(map[string]any)
	want := map[string]any{"destination": "a.test", "retry_last_ts": 0.0, "retry_interval": 0.0, "failure_ts": nil, "last_successful_stream_ordering": 40.0, "paused": false, "retry_next_ts": 0.0}
	for k, v := range want {
		if b[k] != v {
			t.Errorf("field %s = %v, want %v", k, b[k], v)
		}
	}
	for _, q := range []string{"?from=-1", "?limit=-5", "?limit=ten", "?from=1.5", "?order_by=name", "?dir=up"} {
		e.wantError("GET", syn+q, "", http.StatusBadRequest, "M_INVALID_PARAM")
	}
}

func TestDestinationDetailAndRooms(t *testing.T) {
	e := newEnv(t)
	e.seed()
	code, out := e.call("GET", syn+"/b.test", "")
	want := map[string]any{"destination": "b.test", "retry_last_ts": 5000.0, "retry_interval": 1200000.0, "failure_ts": 1000.0, "last_successful_stream_ordering": 7.0}
	for k, v := range want {
		if out[k] != v {
			t.Errorf("b.test %s = %v, want %v (%d)", k, out[k], v, code)
		}
	}
	if code, out := e.call("GET", syn+"/d.test", ""); code != 200 || out["retry_interval"] != 0.0 || out["failure_ts"] != nil {
		t.Errorf("a destination known by its catch-up only: %d %v", code, out)
	}
	e.wantError("GET", syn+"/unknown.test", "", http.StatusNotFound, "M_NOT_FOUND")
	e.wantError("GET", syn+"/unknown.test/rooms", "", http.StatusNotFound, "M_NOT_FOUND")

	// b.test accepted events of !r1 (before its waiting one) and of !r0.
	e.exec(`INSERT INTO sender_destination_rooms (destination, room_id, acked_position) VALUES ('b.test', '!r0:x', 4), ('b.test', '!r1:x', 3)`)
	code, out = e.call("GET", syn+"/b.test/rooms?limit=3", "")
	if code != 200 || out["total"] != 4.0 || out["next_token"] != "3" {
		t.Fatalf("rooms: %d %v", code, out)
	}
	if rooms := out["rooms"].([]any); len(rooms) != 3 || rooms[0].(map[string]any)["room_id"] != "!r0:x" || rooms[0].(map[string]any)["stream_ordering"] != 4.0 {
		t.Errorf("rooms %v: want !r0:x first, at what b.test accepted", rooms)
	}
	e.exec(`DELETE FROM sender_destination_rooms WHERE room_id = '!r0:x'`)
	code, out = e.call("GET", syn+"/b.test/rooms?limit=2", "")
	if code != 200 || out["total"] != 3.0 || out["next_token"] != "2" {
		t.Fatalf("rooms: %d %v", code, out)
	}
	rooms := out["rooms"].([]any)
	if len(rooms) != 2 || rooms[0].(map[string]any)["room_id"] != "!r1:x" || rooms[0].(map[string]any)["stream_ordering"] != 11.0 {
		t.Errorf("rooms %v", rooms)
	}
	_, out = e.call("GET", syn+"/b.test/rooms?from=2&dir=b", "")
	if rooms := out["rooms"].([]any); len(rooms) != 1 || rooms[0].(map[string]any)["room_id"] != "!r1:x" || out["next_token"] != nil {
		t.Errorf("rooms from 2 backwards: %v", out)
	}
	if _, out := e.call("GET", syn+"/a.test/rooms", ""); out["total"] != 0.0 || len(out["rooms"].([]any)) != 0 {
		t.Errorf("a.test rooms: %v", out)
	}
	for _, q := range []string{"?from=-1", "?limit=x", "?dir=sideways"} {
		e.wantError("GET", syn+"/b.test/rooms"+q, "", http.StatusBadRequest, "M_INVALID_PARAM")
	}
}

// signals stands in for the sender's queue manager behind the real control
// listener, to see what the sender members are told.
type signals struct {
	mu   sync.Mutex
	seen []string
}

func (s *signals) ResetBackoff(dest string) { s.add("reset " + dest) }
func (s *signals) SetPaused(dest string, p bool) {
	if p {
		s.add("pause " + dest)
	} else {
		s.add("resume " + dest)
	}
}
func (s *signals) CatchUp(dest string) { s.add("catch_up " + dest) }
func (s *signals) add(v string)        { s.mu.Lock(); s.seen = append(s.seen, v); s.mu.Unlock() }
func (s *signals) has(v string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.seen, v)
}

func (e *env) listen() *signals {
	ctx := context.Background() // the probe signals' context
	sig := &signals{}
	l, err := sender.NewControlListener(e.pool, sig, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		e.t.Fatal(err)
	}
	testenv.Background(e.t, "control listener", l.Run)
	// Listening once a probe signal is heard.
	testenv.Eventually(e.t, 10*time.Second, "the listener", func() bool {
		_ = sender.Signal(ctx, e.pool, sender.OpResume, "probe.test")
		time.Sleep(20 * time.Millisecond)
		return sig.has("resume probe.test")
	})
	return sig
}

func TestResetConnectionClearsTheBackoffAndTellsTheSender(t *testing.T) {
	e := newEnv(t)
	e.seed()
	sig := e.listen()
	e.wantError("POST", syn+"/unknown.test/reset_connection", "{}", http.StatusNotFound, "M_NOT_FOUND")
	e.wantError("POST", syn+"/a.test/reset_connection", "{}", http.StatusBadRequest, "M_UNKNOWN") // not backing off
	if code, out := e.call("POST", syn+"/b.test/reset_connection", "{}"); code != 200 || len(out) != 0 {
		t.Fatalf("reset: %d %v", code, out)
	}
	testenv.Eventually(t, time.Second, "the sender told to reset b.test", func() bool { return sig.has("reset b.test") })
	_, out := e.call("GET", syn+"/b.test", "")
	if out["retry_interval"] != 0.0 || out["retry_last_ts"] != 0.0 || out["failure_ts"] != nil || out["retry_next_ts"] != 0.0 {
		t.Errorf("after the reset: %v", out)
	}
	if out["last_successful_stream_ordering"] != 7.0 {
		t.Errorf("the reset lost the last success: %v", out)
	}
	// Now healthy: a second reset is refused as Synapse does.
	e.wantError("POST", syn+"/b.test/reset_connection", "{}", http.StatusBadRequest, "M_UNKNOWN")
	if n := counter(t, e.reg, "fedpipe_admin_destination_actions_total", "reset_connection"); n != 1 {
		t.Errorf("reset_connection actions counted %v, want 1", n)
	}
}

func TestPauseAndResume(t *testing.T) {
	e := newEnv(t)
	e.seed()
	sig := e.listen()
	const own = "/_fedpipe/admin/v1/federation/destinations/"
	e.wantError("POST", own+"unknown.test/pause", "", http.StatusNotFound, "M_NOT_FOUND")
	e.wantError("POST", own+"unknown.test/resume", "", http.StatusNotFound, "M_NOT_FOUND")
	for _, dest := range []string{"c.test", "d.test"} { // d.test has no row yet: it gets one
		if code, out := e.call("POST", own+dest+"/pause", ""); code != 200 || out["paused"] != true {
			t.Fatalf("pause %s: %d %v", dest, code, out)
		}
		testenv.Eventually(t, time.Second, "the sender told to pause "+dest, func() bool { return sig.has("pause " + dest) })
		if _, out := e.call("GET", syn+"/"+dest, ""); out["paused"] != true {
			t.Errorf("%s after pause: %v", dest, out)
		}
	}
	_, out := e.call("GET", syn+"/c.test", "")
	if out["retry_interval"] != 600000.0 {
		t.Errorf("pausing changed the backoff: %v", out)
	}
	if code, out := e.call("POST", own+"c.test/resume", ""); code != 200 || out["paused"] != false {
		t.Fatalf("resume: %d %v", code, out)
	}
	testenv.Eventually(t, time.Second, "the sender told to resume c.test", func() bool { return sig.has("resume c.test") })
	if _, out := e.call("GET", syn+"/c.test", ""); out["paused"] != false {
		t.Errorf("after resume: %v", out)
	}
	e.wantError("GET", own+"c.test/pause", "", http.StatusMethodNotAllowed, "M_UNRECOGNIZED") // a POST route
}

// counter reads the counter name{…=label}, failing the test when it is missing.
func counter(t *testing.T, reg *prometheus.Registry, name string, label string) float64 {
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
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("metric %s{%s} not registered", name, label)
	return 0
}

func TestWaitForPosition(t *testing.T) {
	e := newEnv(t)
	const wait = "/_fedpipe/admin/v1/wait_for_position"
	for _, q := range []string{"", "?stream=presence&position=1", "?stream=events", "?stream=events&position=-1", "?stream=events&position=x",
		"?stream=events&position=1&timeout=soon", "?stream=events&position=1&timeout=0s", "?stream=events&position=1&timeout=2m"} {
		e.wantError("GET", wait+q, "", http.StatusBadRequest, "M_INVALID_PARAM")
	}
	// Nothing relayed yet: position 5 times out.
	start := time.Now()
	e.wantError("GET", wait+"?stream=events&position=5&timeout=300ms", "", http.StatusGatewayTimeout, "FEDPIPE_TIMEOUT")
	if d := time.Since(start); d < 300*time.Millisecond || d > 5*time.Second {
		t.Errorf("the timeout took %s", d)
	}
	// The relay has published past 5, but the router has not committed it.
	ctx := context.Background()
	w := kafkaio.NewWriter(e.brokers, "fp.room")
	defer w.Close()
	var msgs []kafka.Message
	for _, room := range []string{"!a:x", "!b:x", "!c:x", "!d:x"} {
		msgs = append(msgs, kafka.Message{Key: []byte(room), Value: []byte(`{}`)})
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	e.exec("INSERT INTO relay_positions (stream, position) VALUES ('events', 6)")
	e.wantError("GET", wait+"?stream=events&position=5&timeout=300ms", "", http.StatusGatewayTimeout, "FEDPIPE_TIMEOUT")

	// A waiting caller is answered once the router's group commits the ends.
	answered := make(chan int, 1)
	go func() {
		code, _ := e.call("GET", wait+"?stream=events&position=5&timeout=20s", "")
		answered <- code
	}()
	select {
	case code := <-answered:
		t.Fatalf("answered %d before the router committed", code)
	case <-time.After(200 * time.Millisecond):
	}
	client := &kafka.Client{Addr: kafka.TCP(e.brokers...)}
	commits := map[string][]kafka.OffsetCommit{}
	ends, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{"fp.room": {kafka.LastOffsetOf(0), kafka.LastOffsetOf(1)}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ends.Topics["fp.room"] {
		commits["fp.room"] = append(commits["fp.room"], kafka.OffsetCommit{Partition: p.Partition, Offset: p.LastOffset})
	}
	if _, err := client.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: "fp-router", GenerationID: -1, Topics: commits}); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-answered:
		if code != 200 {
			t.Fatalf("after the commit: %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not answered after the router committed")
	}
	if code, out := e.call("GET", wait+"?stream=events&position=6", ""); code != 200 || out["relayed"] != 6.0 {
		t.Errorf("position 6: %d %v", code, out)
	}
}

// stamp gives each dead letter written its own second, newest last, so
// "latest" has one right order whichever partitions they land on.
var stamp = time.Now().Add(-time.Hour).Truncate(time.Second)

func nextStamp() time.Time { stamp = stamp.Add(time.Second); return stamp }

// deadLetter writes a record to the dead-letter topic as the runtime does.
func deadLetter(t *testing.T, w *kafka.Writer, source, key, value, reason string) {
	t.Helper()
	err := w.WriteMessages(context.Background(), kafka.Message{Time: nextStamp(), Key: []byte(key), Value: []byte(value), Headers: []kafka.Header{
		{Key: "kind", Value: []byte("event")},
		{Key: "deadletter_reason", Value: []byte(reason)}, {Key: "source_topic", Value: []byte(source)},
		{Key: "source_partition", Value: []byte("1")}, {Key: "source_offset", Value: []byte("7")},
		{Key: "deadletter_group", Value: []byte("fp-router")}, {Key: "deadletter_instance", Value: []byte("test")},
	}})
	if err != nil {
		t.Fatal(err)
	}
}

func TestDeadLettersCountLatestAndRedrive(t *testing.T) {
	e := newEnv(t)
	const dl = "/_fedpipe/admin/v1/deadletters"
	if code, out := e.call("GET", dl, ""); code != 200 || out["total"] != 0.0 || len(out["latest"].([]any)) != 0 {
		t.Fatalf("empty: %d %v", code, out)
	}
	w := kafkaio.NewWriter(e.brokers, "fp.deadletter")
	defer w.Close()
	deadLetter(t, w, "fp.room", "!a:x", `{"bad":1}`, "decoding: bad 1")
	deadLetter(t, w, "fp.room", "!b:x", `{"bad":2}`, "decoding: bad 2")
	deadLetter(t, w, "fp.usersync", "worker1", `{"bad":3}`, "decoding: bad 3")
	deadLetter(t, w, "elsewhere.topic", "k", `{"bad":4}`, "decoding: bad 4")
	// Cut to its first 64 KiB by the writer that could not write it.
	if err := w.WriteMessages(context.Background(), kafka.Message{Time: nextStamp(), Key: []byte("big"), Value: []byte(`{"cut`), Headers: []kafka.Header{
		{Key: "deadletter_reason", Value: []byte("message too large")}, {Key: "source_topic", Value: []byte("fp.room")},
		{Key: "deadletter_writer", Value: []byte("relay")}, {Key: "deadletter_value_bytes", Value: []byte("2000000")}}}); err != nil {
		t.Fatal(err)
	}
	code, out := e.call("GET", dl+"?limit=2", "")
	if code != 200 || out["total"] != 5.0 || out["scanned"] != 5.0 {
		t.Fatalf("count: %d %v", code, out)
	}
	by := out["by_source_topic"].(map[string]any)
	if by["fp.room"] != 3.0 || by["fp.usersync"] != 1.0 || by["elsewhere.topic"] != 1.0 {
		t.Errorf("by source topic %v", by)
	}
	latest := out["latest"].([]any)
	if len(latest) != 2 || latest[0].(map[string]any)["reason"] != "message too large" || latest[1].(map[string]any)["reason"] != "decoding: bad 4" {
		t.Errorf("latest %v", latest)
	}
	if hs := latest[1].(map[string]any)["headers"].([]any); len(hs) != 7 {
		t.Errorf("headers %v", hs)
	}
	for _, q := range []string{"?limit=x", "?limit=-1", "?limit=5000"} {
		e.wantError("GET", dl+q, "", http.StatusBadRequest, "M_INVALID_PARAM")
	}

	// Where each one is, to name them.
	_, out = e.call("GET", dl+"?limit=10", "")
	at := map[string][2]float64{}
	for _, d := range out["latest"].([]any) {
		m := d.(map[string]any)
		at[m["key"].(string)] = [2]float64{m["partition"].(float64), m["offset"].(float64)}
	}
	ref := func(key string) string {
		return `{"partition":` + jsonNum(at[key][0]) + `,"offset":` + jsonNum(at[key][1]) + `}`
	}
	const rd = dl + "/redrive"
	e.wantError("POST", rd, `not json`, http.StatusBadRequest, "M_BAD_JSON")
	e.wantError("POST", rd, `{"records":[],"extra":1}`, http.StatusBadRequest, "M_BAD_JSON")
	e.wantError("POST", rd, `{"records":[]}`, http.StatusBadRequest, "M_INVALID_PARAM")
	e.wantError("POST", rd, `{"records":[{"partition":0}]}`, http.StatusBadRequest, "M_INVALID_PARAM")
	e.wantError("POST", rd, `{"records":[{"partition":0,"offset":99}]}`, http.StatusNotFound, "M_NOT_FOUND")
	e.wantError("POST", rd, `{"records":[{"partition":7,"offset":0}]}`, http.StatusNotFound, "M_NOT_FOUND")
	e.wantError("POST", rd, `{"records":[`+ref("big")+`]}`, http.StatusBadRequest, "M_INVALID_PARAM")
	// One bad record among good ones: nothing is written.
	e.wantError("POST", rd, `{"records":[`+ref("!a:x")+`,`+ref("k")+`]}`, http.StatusBadRequest, "M_INVALID_PARAM")

	code, out = e.call("POST", rd, `{"records":[`+ref("!a:x")+`,`+ref("worker1")+`]}`)
	if code != 200 || out["redriven"] != 2.0 {
		t.Fatalf("redrive: %d %v", code, out)
	}
	// Back in their source topics with the original key, value and headers.
	got := readAll(t, e.brokers, "fp.room")
	if len(got) != 1 || string(got[0].Key) != "!a:x" || string(got[0].Value) != `{"bad":1}` ||
		len(got[0].Headers) != 1 || got[0].Headers[0].Key != "kind" || string(got[0].Headers[0].Value) != "event" {
		t.Errorf("fp.room holds %+v", got)
	}
	if got := readAll(t, e.brokers, "fp.usersync"); len(got) != 1 || string(got[0].Key) != "worker1" {
		t.Errorf("fp.usersync holds %+v", got)
	}
	if n := counter(t, e.reg, "fedpipe_admin_deadletters_redriven_total", "fp.room"); n != 1 {
		t.Errorf("re-driven to fp.room counted %v", n)
	}
}

func jsonNum(f float64) string { b, _ := json.Marshal(f); return string(b) }

// readAll reads every record of topic's partitions.
func readAll(t *testing.T, brokers []string, topic string) []kafka.Message {
	t.Helper()
	var out []kafka.Message
	for p := 0; p < 2; p++ {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p, MaxWait: 50 * time.Millisecond})
		conn, err := kafka.DialLeader(context.Background(), "tcp", brokers[0], topic, p)
		if err != nil {
			t.Fatal(err)
		}
		end, err := conn.ReadLastOffset()
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		for i := int64(0); i < end; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			m, err := r.ReadMessage(ctx)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, m)
		}
		r.Close()
	}
	return out
}

func TestStatusJSON(t *testing.T) {
	e := newEnv(t)
	e.seed()
	e.exec("UPDATE sender_destinations SET paused = true WHERE destination = 'a.test'")
	code, out := e.call("GET", "/_fedpipe/admin/v1/status", "")
	if code != 200 {
		t.Fatalf("%d %v", code, out)
	}
	var troubled []string
	for _, d := range out["troubled_destinations"].([]any) {
		troubled = append(troubled, d.(map[string]any)["destination"].(string))
	}
	// Worst first: the longest backoff, then the paused healthy one.
	if !slices.Equal(troubled, []string{"b.test", "c.test", "a.test"}) || out["troubled_total"] != 3.0 || out["destinations"] != 4.0 {
		t.Errorf("troubled %v of %v, destinations %v", troubled, out["troubled_total"], out["destinations"])
	}
	groups := out["groups"].([]any)
	if len(groups) != 1 || len(groups[0].(map[string]any)["partitions"].([]any)) != 4 {
		t.Errorf("groups %v", groups)
	}
	if errs := out["errors"].([]any); len(errs) != 0 {
		t.Errorf("errors %v", errs)
	}
}

// resend records for catch-up the latest of our events after the position
// in each room the destination is joined to, and tells the sender members.
func TestResend(t *testing.T) {
	e := newEnv(t)
	e.seed()
	sig := e.listen()
	e.exec(`INSERT INTO events (event_id, room_id, room_version, sender, origin, type, json) VALUES
		('$1', '!r1:hs.test', '10', '@a:hs.test', 'hs.test', 'm.room.message', '{}'),
		('$2', '!r1:hs.test', '10', '@a:hs.test', 'hs.test', 'm.room.message', '{}'),
		('$3', '!r1:hs.test', '10', '@x:a.test', 'a.test', 'm.room.message', '{}'),
		('$4', '!r2:hs.test', '10', '@a:hs.test', 'hs.test', 'm.room.message', '{}'),
		('$5', '!r3:hs.test', '10', '@a:hs.test', 'hs.test', 'm.room.message', '{}')`)
	e.exec(`INSERT INTO router_room_members (room_id, user_id) VALUES ('!r1:hs.test', '@x:a.test'), ('!r2:hs.test', '@y:a.test'), ('!r3:hs.test', '@z:b.test')`)
	// What a.test and b.test accepted: a.test's is forgotten above position 1 (a replay then sends it again).
	e.exec(`INSERT INTO sender_destination_rooms (destination, room_id, acked_position) VALUES
		('a.test', '!r1:hs.test', 1000), ('a.test', '!r2:hs.test', 1), ('b.test', '!r3:hs.test', 1000)`)
	const own = "/_fedpipe/admin/v1/federation/destinations/"
	e.wantError("POST", own+"unknown.test/resend", `{"from_position":0}`, http.StatusNotFound, "M_NOT_FOUND")
	e.wantError("POST", own+"a.test/resend", `{}`, http.StatusBadRequest, "M_INVALID_PARAM")
	e.wantError("POST", own+"a.test/resend", `{"from_position":1,"from_ts":1}`, http.StatusBadRequest, "M_INVALID_PARAM")
	e.wantError("POST", own+"a.test/resend", `{"from_position":-1}`, http.StatusBadRequest, "M_INVALID_PARAM")
	e.wantError("POST", own+"a.test/resend", `{"from_position":"0"}`, http.StatusBadRequest, "M_BAD_JSON")
	code, out := e.call("POST", own+"a.test/resend", `{"from_ts":0}`)
	if code != 200 || out["rooms"] != 2.0 {
		t.Fatalf("resend: %d %v; want the two rooms a.test is in", code, out)
	}
	var accepted string
	if err := e.pool.QueryRow(context.Background(), `SELECT string_agg(destination || room_id || '=' || acked_position, ' ' ORDER BY destination, room_id) FROM sender_destination_rooms`).Scan(&accepted); err != nil {
		t.Fatal(err)
	}
	if accepted != "a.test!r1:hs.test=0 a.test!r2:hs.test=0 b.test!r3:hs.test=1000" {
		t.Fatalf("accepted positions after the resend: %s; want a.test's lowered to the resend's start (0), b.test's kept", accepted)
	}
	testenv.Eventually(t, time.Second, "the sender told to catch a.test up", func() bool { return sig.has("catch_up a.test") })
	var rooms string
	if err := e.pool.QueryRow(context.Background(), `SELECT string_agg(room_id || '=' || event_id, ' ' ORDER BY room_id) FROM sender_catchup WHERE destination = 'a.test'`).Scan(&rooms); err != nil {
		t.Fatal(err)
	}
	if rooms != "!r1:hs.test=$2 !r2:hs.test=$4" {
		t.Fatalf("catch-up rows %q: want each of a.test's rooms' latest event of ours", rooms)
	}
}

func TestProfilesAreServedBehindTheToken(t *testing.T) {
	e := newEnv(t)
	get := func(path string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequest("GET", e.url+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body
	}
	if code, body := get("/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !bytes.Contains(body, []byte("goroutine profile:")) {
		t.Errorf("goroutine dump: %d %.200s", code, body)
	}
	// What `go tool pprof` reads: a gzipped protobuf.
	for _, path := range []string{"/debug/pprof/heap", "/debug/pprof/profile?seconds=1"} {
		if code, body := get(path); code != http.StatusOK || len(body) < 2 || body[0] != 0x1f || body[1] != 0x8b {
			t.Errorf("%s: %d, %d bytes, want a gzipped profile", path, code, len(body))
		}
	}
	e.wantError("GET", "/debug/pprof/nothing", "", http.StatusNotFound, "M_NOT_FOUND")
	if code, out := e.callAs("", "GET", "/debug/pprof/heap", ""); code != http.StatusUnauthorized || out["errcode"] != "M_MISSING_TOKEN" {
		t.Errorf("a profile without the token: %d %v", code, out)
	}
}
