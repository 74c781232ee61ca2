package ingest_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/producers/ingest"
)

// POST /_fedpipe/v1/receipts stores m.read receipts and not private ones;
// bad input is 400 naming the field and writes nothing.
func TestReceiptsRoute(t *testing.T) {
	s := start(t, ingest.Config{ServerName: "hs.test"})
	url := strings.TrimSuffix(s.url, ingest.Path) + ingest.ReceiptsPath
	good := `{"room_id":"!r:hs.test","receipt_type":"m.read","user_id":"@a:hs.test","event_ids":["$e"],"ts":5}`
	for _, tc := range []struct{ name, body, errcode, inText string }{
		{"none", `{"receipts":[]}`, "M_INVALID_PARAM", "receipts"},
		{"remote user", `{"receipts":[` + good + `,{"room_id":"!r:hs.test","receipt_type":"m.read","user_id":"@e:evil.test","event_ids":["$e"],"ts":5}]}`, "M_INVALID_PARAM", "receipts[1].user_id"},
		{"unknown type", `{"receipts":[{"room_id":"!r:hs.test","receipt_type":"m.fully_read","user_id":"@a:hs.test","event_ids":["$e"],"ts":5}]}`, "M_INVALID_PARAM", "receipts[0].receipt_type"},
		{"no events", `{"receipts":[{"room_id":"!r:hs.test","receipt_type":"m.read","user_id":"@a:hs.test","event_ids":[],"ts":5}]}`, "M_INVALID_PARAM", "receipts[0].event_ids"},
		{"not an event id", `{"receipts":[{"room_id":"!r:hs.test","receipt_type":"m.read","user_id":"@a:hs.test","event_ids":["e"],"ts":5}]}`, "M_INVALID_PARAM", "receipts[0].event_ids[0]"},
		{"no ts", `{"receipts":[{"room_id":"!r:hs.test","receipt_type":"m.read","user_id":"@a:hs.test","event_ids":["$e"]}]}`, "M_INVALID_PARAM", "receipts[0].ts"},
		{"NUL thread", `{"receipts":[{"room_id":"!r:hs.test","receipt_type":"m.read","user_id":"@a:hs.test","event_ids":["$e"],"thread_id":"\u0000","ts":5}]}`, "M_INVALID_PARAM", "receipts[0].thread_id"},
		{"ts a string", `{"receipts":[{"room_id":"!r:hs.test","receipt_type":"m.read","user_id":"@a:hs.test","event_ids":["$e"],"ts":"5"}]}`, "M_BAD_JSON", "ts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := request(t, http.MethodPost, url, tc.body, "")
			if a.status != http.StatusBadRequest || a.ErrCode != tc.errcode || !strings.Contains(a.Error, tc.inText) {
				t.Fatalf("answered %d %s %q, want 400 %s naming %s", a.status, a.ErrCode, a.Error, tc.errcode, tc.inText)
			}
		})
	}
	count := func() int {
		var n int
		if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM receipts_stream").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 0 {
		t.Fatalf("%d rows written by refused requests", n)
	}
	private := strings.Replace(good, `"m.read"`, `"m.read.private"`, 1)
	a := request(t, http.MethodPost, url, `{"receipts":[`+good+`,`+private+`]}`, "")
	if a.status != http.StatusOK || len(a.Positions) != 1 || count() != 1 {
		t.Fatalf("answered %d %v %s with %d rows; want 200, one position, the private receipt not stored", a.status, a.Positions, a.Error, count())
	}
}
