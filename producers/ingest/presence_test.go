package ingest_test

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/ingest"
	"github.com/fedpipe/fedpipe/schema"
)

const usersyncTopic = "fedpipe.usersync"

// presenceServer is an ingest server whose usersync writer writes to a real
// broker.
type presenceServer struct {
	base    string
	addr    string
	cluster *kfake.Cluster
}

func startPresence(t *testing.T, cfg ingest.Config) *presenceServer {
	t.Helper()
	cluster, addr := testenv.Broker(t)
	if err := cluster.CreateTopic(usersyncTopic, 4, nil); err != nil {
		t.Fatal(err)
	}
	w := kafkaio.NewWriter([]string{addr}, usersyncTopic)
	t.Cleanup(func() { w.Close() })
	if cfg.UserSync == nil {
		cfg.UserSync = w
	}
	pool := testenv.Pool(t, testenv.Database(t))
	h, err := ingest.NewHandler(cfg, pool, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &presenceServer{base: srv.URL, addr: addr, cluster: cluster}
}

func (s *presenceServer) do(t *testing.T, method, path, body, token string) answer {
	t.Helper()
	return request(t, method, s.base+path, body, token)
}

// readUserSync reads the usersync topic until at least n records arrived.
func readUserSync(t *testing.T, addr string, n int) []testenv.UserSyncMessage {
	t.Helper()
	return testenv.ReadUserSync(t, addr, usersyncTopic, 4, n)
}

func TestUserSyncWritesUpdatesInOrder(t *testing.T) {
	s := startPresence(t, ingest.Config{Token: "s3cret", ServerName: "hs.test"})
	before := time.Now().UnixMilli()
	a := s.do(t, http.MethodPost, ingest.UserSyncPath, `{"instance":"sync1","updates":[
		{"kind":"instance_clear"},
		{"kind":"user_sync","user_id":"@a:hs.test","syncing":true},
		{"kind":"user_active","user_id":"@a:hs.test"},
		{"kind":"set_presence","user_id":"@a:hs.test","presence":"unavailable","status_msg":"lunch <b>"},
		{"kind":"set_presence","user_id":"@a:hs.test","presence":"online","status_msg":null},
		{"kind":"user_sync","user_id":"@a:hs.test","syncing":false},
		{"kind":"instance_alive"}]}`, "s3cret")
	if a.status != http.StatusOK || a.Written == nil || *a.Written != 7 {
		t.Fatalf("answer %+v, want 200 written 7", a)
	}
	after := time.Now().UnixMilli()
	want := []string{
		`{"v":1,"kind":"instance_clear","instance":"sync1"}`,
		`{"v":1,"kind":"user_sync","instance":"sync1","user_id":"@a:hs.test","syncing":true}`,
		`{"v":1,"kind":"user_active","instance":"sync1","user_id":"@a:hs.test"}`,
		`{"v":1,"kind":"set_presence","instance":"sync1","user_id":"@a:hs.test","presence":"unavailable","status_msg":"lunch <b>"}`,
		`{"v":1,"kind":"set_presence","instance":"sync1","user_id":"@a:hs.test","presence":"online"}`,
		`{"v":1,"kind":"user_sync","instance":"sync1","user_id":"@a:hs.test","syncing":false}`,
		`{"v":1,"kind":"instance_alive","instance":"sync1"}`,
	}
	recs := readUserSync(t, s.addr, len(want))
	if len(recs) != len(want) {
		t.Fatalf("%d records, want %d", len(recs), len(want))
	}
	for i, r := range recs {
		if r.TS < before || r.TS > after || r.Partition != recs[0].Partition {
			t.Errorf("record %d: ts %d not in [%d, %d] or partition %d, not %d", i, r.TS, before, after, r.Partition, recs[0].Partition)
		}
		r.TS = 0
		r.V = schema.SchemaVersion
		got, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		// Compare without ts, which the server stamps.
		if g := strings.Replace(string(got), `,"ts":0`, "", 1); g != want[i] {
			t.Errorf("record %d: %s\nwant %s", i, g, want[i])
		}
	}
}

func TestPresencePut(t *testing.T) {
	s := startPresence(t, ingest.Config{})
	if a := s.do(t, http.MethodPut, "/_fedpipe/v1/presence/%40a%3Ahs.test", `{"presence":"unavailable","status_msg":"away"}`, ""); a.status != http.StatusOK {
		t.Fatalf("answer %+v", a)
	}
	if a := s.do(t, http.MethodPut, "/_fedpipe/v1/presence/@b:hs.test", `{"presence":"offline","instance":"sync2"}`, ""); a.status != http.StatusOK {
		t.Fatalf("answer %+v", a)
	}
	recs := readUserSync(t, s.addr, 2)
	got := map[string]testenv.UserSyncMessage{}
	for _, r := range recs {
		got[r.UserID] = r
	}
	if a := got["@a:hs.test"]; len(recs) != 2 || a.Kind != schema.KindSetPresence || a.Instance != ingest.DefaultPresenceInstance ||
		a.Presence != "unavailable" || a.StatusMsg == nil || *a.StatusMsg != "away" {
		t.Fatalf("records %+v", recs)
	}
	if b := got["@b:hs.test"]; b.Instance != "sync2" || b.Presence != "offline" || b.StatusMsg != nil {
		t.Fatalf("record of @b: %+v", b)
	}
}

func TestPresenceInputRejectedWritesNothing(t *testing.T) {
	s := startPresence(t, ingest.Config{Token: "s3cret", ServerName: "hs.test", MaxBodyBytes: 1024, MaxUpdates: 3})
	post := func(updates string) string { return `{"instance":"sync1","updates":[` + updates + `]}` }
	const put = "/_fedpipe/v1/presence/@a:hs.test"
	for _, c := range []struct {
		name, method, path, body, token string
		status                          int
		errcode, says                   string
	}{
		{"bad JSON", "POST", ingest.UserSyncPath, `{"instance":"sync1","updates":[`, "s3cret", 400, "M_BAD_JSON", "body:"},
		{"unknown top field", "POST", ingest.UserSyncPath, `{"instance":"sync1","updates":[],"extra":1}`, "s3cret", 400, "M_BAD_JSON", "extra"},
		{"missing instance", "POST", ingest.UserSyncPath, `{"updates":[{"kind":"instance_alive"}]}`, "s3cret", 400, "M_BAD_JSON", "instance: missing"},
		{"empty instance", "POST", ingest.UserSyncPath, `{"instance":"","updates":[]}`, "s3cret", 400, "M_INVALID_PARAM", "instance: must not be empty"},
		{"missing updates", "POST", ingest.UserSyncPath, `{"instance":"sync1"}`, "s3cret", 400, "M_BAD_JSON", "updates: missing"},
		{"too many updates", "POST", ingest.UserSyncPath, post(`{"kind":"instance_alive"},{"kind":"instance_alive"},{"kind":"instance_alive"},{"kind":"instance_alive"}`), "s3cret", 400, "M_INVALID_PARAM", "at most 3"},
		{"bad kind after a good update", "POST", ingest.UserSyncPath, post(`{"kind":"instance_alive"},{"kind":"user_typing","user_id":"@a:hs.test"}`), "s3cret", 400, "M_INVALID_PARAM", `updates[1].kind: "user_typing"`},
		{"missing kind", "POST", ingest.UserSyncPath, post(`{"user_id":"@a:hs.test"}`), "s3cret", 400, "M_BAD_JSON", "updates[0].kind: missing"},
		{"unknown update field", "POST", ingest.UserSyncPath, post(`{"kind":"instance_alive","instance":"x"}`), "s3cret", 400, "M_BAD_JSON", "updates[0]"},
		{"bad user id", "POST", ingest.UserSyncPath, post(`{"kind":"instance_alive"},{"kind":"user_active","user_id":"alice"}`), "s3cret", 400, "M_INVALID_PARAM", "updates[1].user_id"},
		{"user of another server", "POST", ingest.UserSyncPath, post(`{"kind":"user_active","user_id":"@a:remote.test"}`), "s3cret", 400, "M_INVALID_PARAM", "not a user of hs.test"},
		{"user_sync without syncing", "POST", ingest.UserSyncPath, post(`{"kind":"user_sync","user_id":"@a:hs.test"}`), "s3cret", 400, "M_BAD_JSON", "updates[0].syncing: missing"},
		{"syncing of the wrong type", "POST", ingest.UserSyncPath, post(`{"kind":"user_sync","user_id":"@a:hs.test","syncing":"yes"}`), "s3cret", 400, "M_BAD_JSON", "syncing"},
		{"user on instance_alive", "POST", ingest.UserSyncPath, post(`{"kind":"instance_alive","user_id":"@a:hs.test"}`), "s3cret", 400, "M_INVALID_PARAM", "updates[0].user_id: instance_alive has none"},
		{"status_msg on user_active", "POST", ingest.UserSyncPath, post(`{"kind":"user_active","user_id":"@a:hs.test","status_msg":"x"}`), "s3cret", 400, "M_INVALID_PARAM", "updates[0].status_msg"},
		{"unknown presence", "POST", ingest.UserSyncPath, post(`{"kind":"set_presence","user_id":"@a:hs.test","presence":"busy"}`), "s3cret", 400, "M_INVALID_PARAM", `updates[0].presence: "busy"`},
		{"too large body", "POST", ingest.UserSyncPath, post(`{"kind":"instance_alive"}` + strings.Repeat(" ", 2000)), "s3cret", 413, "M_TOO_LARGE", "1024"},
		{"missing token", "POST", ingest.UserSyncPath, post(`{"kind":"instance_alive"}`), "", 401, "M_MISSING_TOKEN", ""},
		{"bad token", "POST", ingest.UserSyncPath, post(`{"kind":"instance_alive"}`), "guess", 401, "M_UNKNOWN_TOKEN", ""},
		{"GET", "GET", ingest.UserSyncPath, "", "s3cret", 405, "M_UNRECOGNIZED", "POST"},
		{"PUT bad user id", "PUT", "/_fedpipe/v1/presence/alice", `{"presence":"online"}`, "s3cret", 400, "M_INVALID_PARAM", "userId"},
		{"PUT unknown presence", "PUT", put, `{"presence":"away"}`, "s3cret", 400, "M_INVALID_PARAM", `presence: "away"`},
		{"PUT missing presence", "PUT", put, `{"status_msg":"x"}`, "s3cret", 400, "M_BAD_JSON", "presence: missing"},
		{"PUT empty instance", "PUT", put, `{"presence":"online","instance":""}`, "s3cret", 400, "M_INVALID_PARAM", "instance"},
		{"PUT bad JSON", "PUT", put, `{"presence":`, "s3cret", 400, "M_BAD_JSON", "body"},
		{"PUT too large body", "PUT", put, `{"presence":"online","status_msg":"` + strings.Repeat("x", 2000) + `"}`, "s3cret", 413, "M_TOO_LARGE", ""},
		{"PUT bad token", "PUT", put, `{"presence":"online"}`, "guess", 401, "M_UNKNOWN_TOKEN", ""},
		{"POST on presence", "POST", put, `{"presence":"online"}`, "s3cret", 405, "M_UNRECOGNIZED", "PUT"},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := s.do(t, c.method, c.path, c.body, c.token)
			if a.status != c.status || a.ErrCode != c.errcode || !strings.Contains(a.Error, c.says) {
				t.Fatalf("answer %+v, want %d %s saying %q", a, c.status, c.errcode, c.says)
			}
		})
	}
	if a := s.do(t, http.MethodPost, ingest.UserSyncPath, post(`{"kind":"user_active","user_id":"@marker:hs.test"}`), "s3cret"); a.status != http.StatusOK {
		t.Fatalf("marker: %+v", a)
	}
	if recs := readUserSync(t, s.addr, 1); len(recs) != 1 || recs[0].UserID != "@marker:hs.test" {
		t.Fatalf("records %+v, want only the marker", recs)
	}
}

func TestPresenceInputOffWithoutWriter(t *testing.T) {
	pool := testenv.Pool(t, testenv.Database(t))
	h, err := ingest.NewHandler(ingest.Config{}, pool, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	s := &presenceServer{base: srv.URL}
	for _, c := range []struct{ method, path, body string }{
		{http.MethodPost, ingest.UserSyncPath, `{"instance":"sync1","updates":[]}`},
		{http.MethodPut, "/_fedpipe/v1/presence/@a:hs.test", `{"presence":"online"}`},
	} {
		if a := s.do(t, c.method, c.path, c.body, ""); a.status != http.StatusNotFound || a.ErrCode != "M_UNRECOGNIZED" || !strings.Contains(a.Error, "not enabled") {
			t.Fatalf("%s %s: %+v, want 404 saying presence input is not enabled", c.method, c.path, a)
		}
	}
}

func TestUserSyncBrokerDownIs503(t *testing.T) {
	s := startPresence(t, ingest.Config{})
	body := `{"instance":"sync1","updates":[{"kind":"instance_alive"}]}`
	if a := s.do(t, http.MethodPost, ingest.UserSyncPath, body, ""); a.status != http.StatusOK {
		t.Fatalf("answer %+v", a)
	}
	s.cluster.Close()
	if a := s.do(t, http.MethodPost, ingest.UserSyncPath, body, ""); a.status != http.StatusServiceUnavailable || a.ErrCode != "M_UNKNOWN" {
		t.Fatalf("answer %+v, want 503", a)
	}
	if a := s.do(t, http.MethodPut, "/_fedpipe/v1/presence/@a:hs.test", `{"presence":"online"}`, ""); a.status != http.StatusServiceUnavailable {
		t.Fatalf("answer %+v, want 503", a)
	}
}

// TestPresenceInputTextIsCapped: a status message over 1,024 bytes, and a NUL
// (which PostgreSQL's text refuses) in a status message, instance or user id,
// are refused with 400 before anything is written; 1,024 bytes pass.
func TestPresenceInputTextIsCapped(t *testing.T) {
	s := startPresence(t, ingest.Config{ServerName: "hs.test"})
	long := strings.Repeat("é", 512) + "x" // 1,025 bytes
	const put = "/_fedpipe/v1/presence/@a:hs.test"
	for _, c := range []struct{ name, method, path, body, says string }{
		{"long status_msg", "PUT", put, `{"presence":"online","status_msg":"` + long + `"}`, "status_msg: 1025 bytes, at most 1024"},
		{"NUL in status_msg", "PUT", put, `{"presence":"online","status_msg":"a\u0000b"}`, "NUL"},
		{"NUL in instance", "PUT", put, `{"presence":"online","instance":"w\u0000"}`, "NUL"},
		{"NUL in user id", "PUT", "/_fedpipe/v1/presence/@a%00b:hs.test", `{"presence":"online"}`, "NUL"},
		{"control character in user id", "POST", ingest.UserSyncPath, `{"instance":"w1","updates":[{"kind":"user_active","user_id":"@a\u0007:hs.test"}]}`, "control character"},
		{"NUL in usersync status_msg", "POST", ingest.UserSyncPath, `{"instance":"w1","updates":[{"kind":"set_presence","user_id":"@a:hs.test","presence":"online","status_msg":"\u0000"}]}`, "NUL"},
		{"long usersync status_msg", "POST", ingest.UserSyncPath, `{"instance":"w1","updates":[{"kind":"set_presence","user_id":"@a:hs.test","presence":"online","status_msg":"` + long + `"}]}`, "at most 1024"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if a := s.do(t, c.method, c.path, c.body, ""); a.status != http.StatusBadRequest || a.ErrCode != "M_INVALID_PARAM" || !strings.Contains(a.Error, c.says) {
				t.Fatalf("answer %+v, want 400 M_INVALID_PARAM saying %q", a, c.says)
			}
		})
	}
	if a := s.do(t, http.MethodPut, put, `{"presence":"online","status_msg":"`+long[:1024]+`"}`, ""); a.status != http.StatusOK {
		t.Fatalf("a 1,024-byte status message: %+v", a)
	}
	if recs := readUserSync(t, s.addr, 1); len(recs) != 1 || recs[0].StatusMsg == nil || len(*recs[0].StatusMsg) != 1024 {
		t.Fatalf("records %+v, want only the 1,024-byte status message", recs)
	}
}
