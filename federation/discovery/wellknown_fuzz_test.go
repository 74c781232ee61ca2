package discovery

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/fedpipe/fedpipe/federation/mxid"
)

// FuzzParseWellKnown: any body either is refused with errWellKnown, or names a
// valid server name that survives being written back into a body.
func FuzzParseWellKnown(f *testing.F) {
	for _, s := range []string{
		`{"m.server":"matrix.example.org:443"}`, `{"m.server":"[::1]:8448"}`, `{"m.server":"1.2.3.4"}`,
		`{"m.server":""}`, `{"m.server":5}`, `{"M.Server":"a.example"}`, `{"m.server":"a.example/evil"}`,
		`{"m.server":"a\u0000.example"}`, `[]`, `null`, `{`, `{"m.server":"a.example","m.server":"b.example"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		server, err := parseWellKnown(body)
		if err != nil {
			if !errors.Is(err, errWellKnown) {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		if mxid.ValidateServerName(server) != nil {
			t.Fatalf("accepted an invalid server name %q", server)
		}
		again, err := json.Marshal(map[string]string{"m.server": server})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := parseWellKnown(again); err != nil || got != server {
			t.Fatalf("%q re-encoded as %s parses to %q, %v", server, again, got, err)
		}
	})
}

func TestWellKnownKeyIsCaseSensitive(t *testing.T) {
	if s, err := parseWellKnown([]byte(`{"M.Server":"a.example"}`)); err == nil {
		t.Fatalf("M.Server delegated to %q; the specification's key is m.server", s)
	}
}
