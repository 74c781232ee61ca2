package ingest_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/producers/ingest"
)

// POST /_fedpipe/v1/device_lists stores every update in one transaction, in
// request order; bad input is 400 naming the field (413 for an update too
// large for an EDU) and writes nothing, even when other updates were good.
func TestDeviceListsRoute(t *testing.T) {
	s := start(t, ingest.Config{ServerName: "hs.test"})
	url := strings.TrimSuffix(s.url, ingest.Path) + ingest.DeviceListsPath
	good := `{"user_id":"@a:hs.test","device_id":"D","keys":{"k":1}}`
	big := `{"pad":"` + strings.Repeat("x", 66000) + `"}`
	for _, tc := range []struct {
		name, body, errcode, inText string
		status                      int
	}{
		{"nothing", `{}`, "M_INVALID_PARAM", "devices", 400},
		{"remote user", `{"devices":[` + good + `,{"user_id":"@e:evil.test","device_id":"D"}]}`, "M_INVALID_PARAM", "devices[1].user_id", 400},
		{"deleted with keys", `{"devices":[{"user_id":"@a:hs.test","device_id":"D","deleted":true,"keys":{}}]}`, "M_INVALID_PARAM", "devices[0].keys", 400},
		{"keys not an object", `{"devices":[{"user_id":"@a:hs.test","device_id":"D","keys":[1]}]}`, "M_INVALID_PARAM", "devices[0].keys", 400},
		{"NUL in device", `{"devices":[{"user_id":"@a:hs.test","device_id":"D\u0000"}]}`, "M_INVALID_PARAM", "devices[0].device_id", 400},
		{"signing keys without a key", `{"devices":[` + good + `],"signing_keys":[{"user_id":"@a:hs.test"}]}`, "M_INVALID_PARAM", "signing_keys[0].master_key", 400},
		{"keys too large", `{"devices":[{"user_id":"@a:hs.test","device_id":"D","keys":` + big + `}]}`, "M_TOO_LARGE", "devices[0].keys", 413},
		{"unknown field", `{"devices":[{"user_id":"@a:hs.test","device_id":"D","key":{}}]}`, "M_BAD_JSON", "key", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := request(t, http.MethodPost, url, tc.body, "")
			if a.status != tc.status || a.ErrCode != tc.errcode || !strings.Contains(a.Error, tc.inText) {
				t.Fatalf("answered %d %s %q, want %d %s naming %s", a.status, a.ErrCode, a.Error, tc.status, tc.errcode, tc.inText)
			}
		})
	}
	count := func() int {
		var n int
		if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM device_lists_stream").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 0 {
		t.Fatalf("%d rows written by refused requests", n)
	}
	a := request(t, http.MethodPost, url, `{"devices":[`+good+`,{"user_id":"@a:hs.test","device_id":"OLD","deleted":true}],"signing_keys":[{"user_id":"@a:hs.test","master_key":{"k":1}}]}`, "")
	if a.status != http.StatusOK || len(a.Positions) != 3 || a.Positions[0] >= a.Positions[2] || count() != 3 {
		t.Fatalf("answered %d %v %s; want 200 and three increasing positions", a.status, a.Positions, a.Error)
	}
}
