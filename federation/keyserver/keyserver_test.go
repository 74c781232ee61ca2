package keyserver_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/canonicaljson"
	"github.com/fedpipe/fedpipe/federation/keyserver"
	"github.com/fedpipe/fedpipe/federation/signing"
)

func key(t *testing.T, version string, seed byte) *signing.Key {
	t.Helper()
	k, err := signing.NewKey(version, bytes.Repeat([]byte{seed}, ed25519.SeedSize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

type serverKeys struct {
	ServerName    string                       `json:"server_name"`
	ValidUntilTS  int64                        `json:"valid_until_ts"`
	VerifyKeys    map[string]map[string]string `json:"verify_keys"`
	OldVerifyKeys map[string]struct {
		Key       string `json:"key"`
		ExpiredTS int64  `json:"expired_ts"`
	} `json:"old_verify_keys"`
	Signatures map[string]map[string]string `json:"signatures"`
}

// The response is what a receiver checks: every current key published and
// signing, the old key published with its expiry, canonical JSON, and valid
// for the configured time.
func TestResponseVerifiesWithEveryPublishedKey(t *testing.T) {
	a, b := key(t, "a_one", 1), key(t, "a_two", 2)
	old := key(t, "a_old", 3)
	now := time.UnixMilli(1_700_000_000_000)
	expired := now.Add(-48 * time.Hour)
	body, err := keyserver.Response(keyserver.Config{ServerName: "hs.example:8448", Keys: []*signing.Key{a, b},
		Old: []keyserver.OldKey{{ID: old.ID, Public: old.Public(), Expired: expired}}, Validity: time.Hour}, now)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := canonicaljson.Canonicalize(body); err != nil || !bytes.Equal(c, body) {
		t.Fatalf("response is not canonical JSON (%v): %s", err, body)
	}
	var got serverKeys
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawStdEncoding.EncodeToString
	if got.ServerName != "hs.example:8448" || got.ValidUntilTS != now.Add(time.Hour).UnixMilli() {
		t.Errorf("server_name %q valid_until_ts %d", got.ServerName, got.ValidUntilTS)
	}
	for _, k := range []*signing.Key{a, b} {
		if got.VerifyKeys[k.ID]["key"] != b64(k.Public()) {
			t.Errorf("verify_keys[%s] = %v, want %s", k.ID, got.VerifyKeys[k.ID], b64(k.Public()))
		}
		// Found by the id and public key published, as a receiver does.
		pub, _ := base64.RawStdEncoding.DecodeString(got.VerifyKeys[k.ID]["key"])
		if err := signing.VerifyJSON("hs.example:8448", k.ID, pub, body); err != nil {
			t.Errorf("signature by %s: %v", k.ID, err)
		}
	}
	if o := got.OldVerifyKeys[old.ID]; o.Key != b64(old.Public()) || o.ExpiredTS != expired.UnixMilli() {
		t.Errorf("old_verify_keys[%s] = %+v", old.ID, o)
	}
	if _, signed := got.Signatures["hs.example:8448"][old.ID]; signed || len(got.VerifyKeys) != 2 {
		t.Errorf("the old key is current: %s", body)
	}
	// A changed field breaks the signature: the checks above can fail.
	forged := bytes.Replace(body, []byte(`"valid_until_ts":`), []byte(`"valid_until_ts":9`), 1)
	if err := signing.VerifyJSON("hs.example:8448", a.ID, a.Public(), forged); err == nil {
		t.Fatal("a forged validity verifies")
	}
}

func TestConfigIsChecked(t *testing.T) {
	a := key(t, "a", 1)
	for _, tc := range []struct {
		name string
		cfg  keyserver.Config
		want string
	}{
		{"no server name", keyserver.Config{Keys: []*signing.Key{a}}, "server name"},
		{"no key", keyserver.Config{ServerName: "hs.example"}, "no signing key"},
		{"key twice", keyserver.Config{ServerName: "hs.example", Keys: []*signing.Key{a, a}}, "twice"},
		{"old key current", keyserver.Config{ServerName: "hs.example", Keys: []*signing.Key{a}, Old: []keyserver.OldKey{{ID: a.ID, Public: a.Public()}}}, "also current"},
		{"old key size", keyserver.Config{ServerName: "hs.example", Keys: []*signing.Key{a}, Old: []keyserver.OldKey{{ID: "ed25519:b", Public: []byte{1}}}}, "bytes"},
		{"negative validity", keyserver.Config{ServerName: "hs.example", Keys: []*signing.Key{a}, Validity: -time.Second}, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := keyserver.NewHandler(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func get(t *testing.T, srv *httptest.Server, method, path string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, nil)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// The handler serves the response at the specification's path (and the
// deprecated one with a key id), keeps it while it is fresh, re-signs it once
// half its validity has passed, and refuses everything else with a Matrix
// error.
func TestHandlerServesAndRenews(t *testing.T) {
	a := key(t, "a", 1)
	clk := &clock{now: time.UnixMilli(1_700_000_000_000)}
	h, err := keyserver.NewHandler(keyserver.Config{ServerName: "hs.example", Keys: []*signing.Key{a}, Validity: 10 * time.Hour, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(h)
	defer srv.Close()

	validUntil := func(body []byte) int64 {
		t.Helper()
		var k serverKeys
		if err := json.Unmarshal(body, &k); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		if err := signing.VerifyJSON("hs.example", a.ID, a.Public(), body); err != nil {
			t.Fatal(err)
		}
		return k.ValidUntilTS
	}
	status, first := get(t, srv, http.MethodGet, "/_matrix/key/v2/server")
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, first)
	}
	start := validUntil(first)
	if want := clk.Now().Add(10 * time.Hour).UnixMilli(); start != want {
		t.Fatalf("valid_until_ts %d, want %d", start, want)
	}
	clk.add(4 * time.Hour)
	if _, b := get(t, srv, http.MethodGet, "/_matrix/key/v2/server/"+a.ID); validUntil(b) != start {
		t.Fatal("re-signed before half the validity passed")
	}
	clk.add(time.Hour + time.Millisecond)
	if _, b := get(t, srv, http.MethodGet, "/_matrix/key/v2/server"); validUntil(b) != clk.Now().Add(10*time.Hour).UnixMilli() {
		t.Fatalf("not renewed after half the validity: %s", b)
	}

	for _, tc := range []struct{ method, path string }{
		{http.MethodPut, "/_matrix/federation/v1/send/1"},
		{http.MethodGet, "/_matrix/federation/v1/event/$e"},
		{http.MethodPost, "/_matrix/key/v2/server"},
		{http.MethodGet, "/"},
	} {
		status, body := get(t, srv, tc.method, tc.path)
		var e struct{ Errcode string }
		if json.Unmarshal(body, &e); status != http.StatusNotFound || e.Errcode != "M_UNRECOGNIZED" {
			t.Errorf("%s %s: %d %s, want 404 M_UNRECOGNIZED", tc.method, tc.path, status, body)
		}
	}
}
