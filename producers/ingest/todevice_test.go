package ingest_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/producers/ingest"
)

func (s *server) toDeviceRows(t *testing.T) int {
	t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM device_federation_outbox").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// POST /_fedpipe/v1/to_device stores one row per remote destination (our
// own users left out); bad input is 400 naming the field, a device's
// message too large for an EDU 413, and nothing is written for either.
func TestToDeviceRoute(t *testing.T) {
	s := start(t, ingest.Config{ServerName: "hs.test", Token: "secret"})
	url := strings.TrimSuffix(s.url, ingest.Path) + ingest.ToDevicePath
	body := func(messages string) string {
		return `{"sender":"@alice:hs.test","type":"m.room_key_request","message_id":"abc","messages":` + messages + `}`
	}
	big := `{"pad":"` + strings.Repeat("x", 66000) + `"}`
	for _, tc := range []struct {
		name, body      string
		status          int
		errcode, inText string
	}{
		{"no token", body(`{"@b:remote.test":{"D":{}}}`), http.StatusUnauthorized, "M_MISSING_TOKEN", ""},
		{"not JSON", `{"sender":`, http.StatusBadRequest, "M_BAD_JSON", "body"},
		{"unknown field", `{"sender":"@alice:hs.test","type":"t","message_id":"m","messages":{},"txn":1}`, http.StatusBadRequest, "M_BAD_JSON", "txn"},
		{"device message not an object", body(`{"@b:remote.test":{"D":"hello"}}`), http.StatusBadRequest, "M_INVALID_PARAM", `messages["@b:remote.test"]["D"]`},
		{"devices not an object", body(`{"@b:remote.test":["D"]}`), http.StatusBadRequest, "M_BAD_JSON", "messages"},
		{"remote sender", `{"sender":"@eve:evil.test","type":"t","message_id":"m","messages":{"@b:remote.test":{"D":{}}}}`, http.StatusBadRequest, "M_INVALID_PARAM", "sender"},
		{"bad user", body(`{"b@remote":{"D":{}}}`), http.StatusBadRequest, "M_INVALID_PARAM", `messages["b@remote"]`},
		{"float", body(`{"@b:remote.test":{"D":{"x":0.5}}}`), http.StatusBadRequest, "M_INVALID_PARAM", `["D"]`},
		{"too large", body(`{"@b:remote.test":{"D":{},"BIG":` + big + `}}`), http.StatusRequestEntityTooLarge, "M_TOO_LARGE", `["BIG"]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			token := "secret"
			if tc.status == http.StatusUnauthorized {
				token = ""
			}
			a := request(t, http.MethodPost, url, tc.body, token)
			if a.status != tc.status || a.ErrCode != tc.errcode || !strings.Contains(a.Error, tc.inText) {
				t.Fatalf("answered %d %s %q, want %d %s naming %s", a.status, a.ErrCode, a.Error, tc.status, tc.errcode, tc.inText)
			}
		})
	}
	if n := s.toDeviceRows(t); n != 0 {
		t.Fatalf("%d rows written by refused requests", n)
	}
	a := request(t, http.MethodPost, url, body(`{"@b:remote.test":{"D":{"a":1}},"@c:other.test":{"*":{}},"@me:hs.test":{"M":{}}}`), "secret")
	if a.status != http.StatusOK || len(a.Positions) != 2 {
		t.Fatalf("answered %d %v %s, want 200 and two positions (our own user left out)", a.status, a.Positions, a.Error)
	}
	if a := request(t, http.MethodGet, url, "", "secret"); a.status != http.StatusMethodNotAllowed {
		t.Fatalf("GET answered %d", a.status)
	}
}
