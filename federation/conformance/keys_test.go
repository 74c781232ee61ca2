package conformance

import (
	"bytes"
	"crypto/ed25519"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/keyserver"
	"github.com/fedpipe/fedpipe/federation/signing"
)

// What fedpipe's key listener serves at GET /_matrix/key/v2/server matches the
// specification's Server Keys schema, with and without old keys; an object
// lacking a required member does not, so the check can fail.
func TestServerKeysMatchTheSpecification(t *testing.T) {
	s := compile(t, "keys.yaml")
	cur, err := signing.NewKey("a_cur", bytes.Repeat([]byte{1}, ed25519.SeedSize))
	if err != nil {
		t.Fatal(err)
	}
	old, err := signing.NewKey("a_old", bytes.Repeat([]byte{2}, ed25519.SeedSize))
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]keyserver.Config{
		"current key only": {ServerName: "example.org", Keys: []*signing.Key{cur}},
		"with an old key": {ServerName: "example.org:8448", Keys: []*signing.Key{cur},
			Old: []keyserver.OldKey{{ID: old.ID, Public: old.Public(), Expired: time.Now().Add(-time.Hour)}}},
	} {
		body, err := keyserver.Response(cfg, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if err := validate(t, s, body); err != nil {
			t.Errorf("%s: %v\n%s", name, err, body)
		}
	}
	if err := validate(t, s, []byte(`{"server_name":"example.org","verify_keys":{},"signatures":{}}`)); err == nil {
		t.Error("an object without valid_until_ts passes the schema")
	}
}
