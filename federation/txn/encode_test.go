package txn_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/fedpipe/fedpipe/federation/canonicaljson"
	"github.com/fedpipe/fedpipe/federation/signing"
	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/federation/xmatrix"
)

// Encode's canonical JSON is exactly the canonical form of the body it
// returns, whatever the PDUs' and EDUs' spacing, escapes, key order and
// numbers, so a signature over it verifies against the body sent.
func TestEncodeCanonicalIsTheBodysCanonicalForm(t *testing.T) {
	for _, c := range []struct {
		name string
		pdus []string
		edus []txn.EDU
	}{
		{"empty", nil, nil},
		{"pdus only", []string{`{"b": 1, "a": "\u00e9\u0041", "c": [1.0, -0, 1e2]}`, "{\n\"type\":\"m.room.message\",\"content\":{\"body\":\"<b>&</b> \\/ é\"}}"}, nil},
		{"edus only", nil, []txn.EDU{{Type: "m.typing", Content: json.RawMessage(`{ "typing" : true, "room_id":"!r:a"}`)}, {Type: "m.\"odd\"", Content: json.RawMessage(`{}`)}}},
		{"both", []string{`{"z":{"y":{"x":[{"b":2,"a":1}]}}}`}, []txn.EDU{{Type: "m.presence", Content: json.RawMessage(`{"push":[]}`)}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tx := txn.Transaction{ID: "t1", Origin: "örigin.test", Destination: "d.test", OriginServerTS: 1700000000123}
			for _, p := range c.pdus {
				if err := tx.AddPDU(json.RawMessage(p)); err != nil {
					t.Fatal(err)
				}
			}
			for _, e := range c.edus {
				if err := tx.AddEDU(e); err != nil {
					t.Fatal(err)
				}
			}
			body, canonical, err := tx.Encode()
			if err != nil {
				t.Fatal(err)
			}
			want, err := canonicaljson.AppendCanonical(nil, body)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(canonical, want) {
				t.Fatalf("canonical\n%s\nwant\n%s", canonical, want)
			}
			k, err := signing.GenerateKey()
			if err != nil {
				t.Fatal(err)
			}
			auth, err := xmatrix.AuthorizationCanonical(tx.Origin, tx.Destination, k, "PUT", tx.Path(), canonical)
			if err != nil {
				t.Fatal(err)
			}
			h, err := xmatrix.Parse(auth)
			if err != nil {
				t.Fatal(err)
			}
			if err := xmatrix.Verify(h, "PUT", tx.Path(), tx.Destination, body, k.Public()); err != nil {
				t.Fatalf("the receiver refuses the signature: %v", err)
			}
		})
	}
}
