package ingest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/ingest"
	"github.com/fedpipe/fedpipe/schema"
)

type server struct {
	url  string
	pool *pgxpool.Pool
	db   string
}

func start(t testing.TB, cfg ingest.Config) *server {
	t.Helper()
	url := testenv.Database(t)
	pool := testenv.Pool(t, url)
	if err := schema.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	h, err := ingest.NewHandler(cfg, pool, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h) // listens on 127.0.0.1
	t.Cleanup(srv.Close)
	pc, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	return &server{url: srv.URL + ingest.Path, pool: pool, db: pc.Database}
}

// answer is an ingest response: positions for events, written for presence
// input, errcode and error for a refusal.
type answer struct {
	status    int
	Positions []int64 `json:"positions"`
	Written   *int    `json:"written"`
	ErrCode   string  `json:"errcode"`
	Error     string  `json:"error"`
}

// request sends body to url with an optional bearer token and decodes the
// JSON answer.
func request(t *testing.T, method, url, body, token string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode}
	if err := json.Unmarshal(raw, &a); err != nil {
		t.Fatalf("answer %d is not JSON: %s", resp.StatusCode, raw)
	}
	return a
}

func (s *server) post(t *testing.T, body, token string) answer {
	t.Helper()
	return request(t, http.MethodPost, s.url, body, token)
}

func (s *server) count(t *testing.T) int {
	t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM events").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func eventID(n int) string { return fmt.Sprintf("$%043d", n) }

// memberEvent is a request element: bob joins; its PDU has odd spacing and an
// escaped character so the test sees the bytes are stored untouched.
func memberEvent(n int) string {
	return fmt.Sprintf(`{"room_version":"10","event_id":%q,
		"pdu":{"room_id":"!r:hs.test", "sender":"@alice:hs.test","type":"m.room.member","state_key":"@bob:remote.test","content":{"membership":"join","displayname":"B\u00f6b <3"}},
		"state_deltas":[{"type":"m.room.member","state_key":"@bob:remote.test","event_id":%q,"membership":"join","prev_membership":"invite"}]}`, eventID(n), eventID(n))
}

func messageEvent(n int, pdu string) string {
	return fmt.Sprintf(`{"room_version":"10","event_id":%q,"pdu":%s}`, eventID(n), pdu)
}

func TestPersistsBatch(t *testing.T) {
	s := start(t, ingest.Config{})
	msg := `{"room_id":"!r:hs.test","sender":"@alice:hs.test","type":"m.room.message","content":{"body":"hi & bye"}}`
	a := s.post(t, `{"events":[`+memberEvent(1)+`,`+messageEvent(2, msg)+`]}`, "")
	if a.status != http.StatusOK || len(a.Positions) != 2 || a.Positions[1] <= a.Positions[0] {
		t.Fatalf("answer %+v, want 200 with two increasing positions", a)
	}
	var stored, typ string
	var stateKey *string
	if err := s.pool.QueryRow(context.Background(), "SELECT json, type, state_key FROM events WHERE stream_ordering = $1", a.Positions[1]).Scan(&stored, &typ, &stateKey); err != nil {
		t.Fatal(err)
	}
	if stored != msg || typ != "m.room.message" || stateKey != nil {
		t.Fatalf("stored %s type %s state_key %v; want the PDU bytes, its type and no state key", stored, typ, stateKey)
	}
	var membership, prev string
	if err := s.pool.QueryRow(context.Background(), "SELECT membership, prev_membership FROM current_state_delta_stream WHERE stream_id = $1", a.Positions[0]).Scan(&membership, &prev); err != nil {
		t.Fatal(err)
	}
	if membership != "join" || prev != "invite" {
		t.Fatalf("delta membership %q prev %q", membership, prev)
	}
	// An empty batch is valid and persists nothing.
	if a := s.post(t, `{"events":[]}`, ""); a.status != http.StatusOK || a.Positions == nil || len(a.Positions) != 0 {
		t.Fatalf("empty batch: %+v", a)
	}
}

func TestRejectsNamingTheField(t *testing.T) {
	s := start(t, ingest.Config{})
	good := memberEvent(1)
	tests := []struct {
		name           string
		body           string
		status         int
		errcode        string
		errorHasPrefix string
	}{
		{"not json", `{"events":[`, 400, "M_BAD_JSON", "body: "},
		{"no events", `{}`, 400, "M_BAD_JSON", "events: missing"},
		{"unknown field", `{"events":[{"room_version":"10","event_id":"$x","pdu":{},"state_delta":[]}]}`, 400, "M_BAD_JSON", "events[0]: "},
		{"pdu missing", `{"events":[` + good + `,{"room_version":"10","event_id":"$x"}]}`, 400, "M_BAD_JSON", "events[1].pdu: missing"},
		{"pdu sender not a string", `{"events":[` + good + `,` + messageEvent(2, `{"room_id":"!r:hs.test","sender":7,"type":"m.room.message"}`) + `]}`, 400, "M_BAD_JSON", "events[1].pdu.sender: must be a string"},
		{"room version a number", `{"events":[{"room_version":10,"event_id":"$x","pdu":{}}]}`, 400, "M_BAD_JSON", "events[0]: "},
		{"unknown room version", `{"events":[` + strings.Replace(good, `"room_version":"10"`, `"room_version":"99"`, 1) + `]}`, 400, "M_INVALID_PARAM", "events[0].room_version: "},
		{"bad sender grammar, after a good event", `{"events":[` + good + `,` + messageEvent(2, `{"room_id":"!r:hs.test","sender":"alice","type":"m.room.message"}`) + `]}`, 400, "M_INVALID_PARAM", "events[1].pdu.sender: "},
		{"bad room id", `{"events":[` + messageEvent(2, `{"room_id":"#r:hs.test","sender":"@alice:hs.test","type":"m.room.message"}`) + `]}`, 400, "M_INVALID_PARAM", "events[0].pdu.room_id: "},
		{"delta without event_id", `{"events":[{"room_version":"10","event_id":"` + eventID(3) + `","pdu":{"room_id":"!r:hs.test","sender":"@alice:hs.test","type":"m.room.topic","state_key":""},"state_deltas":[{"type":"m.room.topic","state_key":""}]}]}`, 400, "M_BAD_JSON", "events[0].state_deltas[0].event_id: missing"},
		{"bad delta membership", `{"events":[` + strings.Replace(good, `"membership":"join","prev`, `"membership":"joined","prev`, 1) + `]}`, 400, "M_INVALID_PARAM", "events[0].state_deltas[0].membership: "},
		{"same event twice", `{"events":[` + good + `,` + good + `]}`, 400, "M_INVALID_PARAM", "events[1].event_id: "},
		{"pdu too large", `{"events":[` + messageEvent(2, `{"room_id":"!r:hs.test","sender":"@alice:hs.test","type":"m.room.message","pad":"`+strings.Repeat("x", 65536)+`"}`) + `]}`, 400, "M_INVALID_PARAM", "events[0].pdu: "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := s.post(t, tc.body, "")
			if a.status != tc.status || a.ErrCode != tc.errcode || !strings.HasPrefix(a.Error, tc.errorHasPrefix) {
				t.Fatalf("answer %d %s %q, want %d %s %q...", a.status, a.ErrCode, a.Error, tc.status, tc.errcode, tc.errorHasPrefix)
			}
			if n := s.count(t); n != 0 {
				t.Fatalf("%d events persisted by a rejected request", n)
			}
		})
	}
}

func TestDuplicateEventPersistsNothing(t *testing.T) {
	s := start(t, ingest.Config{})
	if a := s.post(t, `{"events":[`+memberEvent(1)+`]}`, ""); a.status != http.StatusOK {
		t.Fatalf("first: %+v", a)
	}
	msg := `{"room_id":"!r:hs.test","sender":"@alice:hs.test","type":"m.room.message"}`
	a := s.post(t, `{"events":[`+messageEvent(2, msg)+`,`+memberEvent(1)+`]}`, "")
	if a.status != http.StatusConflict || !strings.HasPrefix(a.Error, "events[1].event_id: ") {
		t.Fatalf("answer %+v, want 409 naming events[1].event_id", a)
	}
	if n := s.count(t); n != 1 {
		t.Fatalf("%d events, want only the first request's", n)
	}
}

// A request sent again after its answer was lost gets the stored positions,
// so a caller can always retry; the same id with other bytes is a conflict.
func TestRetriedRequestGetsTheSamePositions(t *testing.T) {
	s := start(t, ingest.Config{})
	msg := `{"room_id":"!r:hs.test","sender":"@alice:hs.test","type":"m.room.message","content":{"body":"once"}}`
	body := `{"events":[` + memberEvent(1) + `,` + messageEvent(2, msg) + `]}`
	first := s.post(t, body, "")
	if first.status != http.StatusOK {
		t.Fatalf("first: %+v", first)
	}
	again := s.post(t, body, "")
	if again.status != http.StatusOK || fmt.Sprint(again.Positions) != fmt.Sprint(first.Positions) {
		t.Fatalf("retry answered %+v, want 200 with %v", again, first.Positions)
	}
	changed := strings.Replace(body, `"once"`, `"twice"`, 1)
	if a := s.post(t, changed, ""); a.status != http.StatusConflict || !strings.HasPrefix(a.Error, "events[1].event_id: ") {
		t.Fatalf("same ids, other bytes: %+v, want 409 naming events[1].event_id", a)
	}
	if n := s.count(t); n != 2 {
		t.Fatalf("%d events stored, want 2", n)
	}
}

func TestBodyLimit(t *testing.T) {
	s := start(t, ingest.Config{MaxBodyBytes: 1024})
	pad := strings.Repeat(" ", 2000)
	if a := s.post(t, `{"events":[`+pad+`]}`, ""); a.status != http.StatusRequestEntityTooLarge || a.ErrCode != "M_TOO_LARGE" {
		t.Fatalf("answer %+v, want 413", a)
	}
	// Without a Content-Length the limit holds while reading.
	req, _ := http.NewRequest(http.MethodPost, s.url, io.MultiReader(strings.NewReader(`{"events":[`+pad+`]}`)))
	req.ContentLength = -1
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("chunked body: %d, want 413", resp.StatusCode)
	}
}

func TestBearerToken(t *testing.T) {
	s := start(t, ingest.Config{Token: "s3cret"})
	body := `{"events":[` + memberEvent(1) + `]}`
	for _, tc := range []struct {
		name, token string
		status      int
		errcode     string
	}{
		{"no token", "", 401, "M_MISSING_TOKEN"},
		{"wrong token", "guess", 401, "M_UNKNOWN_TOKEN"},
		{"right token", "s3cret", 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if a := s.post(t, body, tc.token); a.status != tc.status || a.ErrCode != tc.errcode {
				t.Fatalf("answer %+v, want %d %s", a, tc.status, tc.errcode)
			}
		})
	}
}

func TestDatabaseDownIs503(t *testing.T) {
	s := start(t, ingest.Config{})
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, testenv.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	// Refuse new connections to the test database and end the open ones, as a
	// database restart does.
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+s.db+" WITH ALLOW_CONNECTIONS false"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", s.db); err != nil {
		t.Fatal(err)
	}
	body := `{"events":[` + memberEvent(1) + `]}`
	for range 2 { // a pooled connection that died, then a refused new one
		if a := s.post(t, body, ""); a.status != http.StatusServiceUnavailable {
			t.Fatalf("answer %+v, want 503", a)
		}
	}
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+s.db+" WITH ALLOW_CONNECTIONS true"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "ingest to recover", func() bool { return s.post(t, body, "").status == http.StatusOK })
}

func TestOnlyPost(t *testing.T) {
	s := start(t, ingest.Config{})
	resp, err := http.Get(s.url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
}
