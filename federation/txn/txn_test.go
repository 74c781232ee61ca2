package txn

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/federation/canonicaljson"
)

func TestLimits(t *testing.T) {
	var tx Transaction
	for i := 0; i < MaxPDUs; i++ {
		if err := tx.AddPDU(json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.AddPDU(json.RawMessage(`{}`)); !errors.Is(err, ErrFull) {
		t.Fatalf("PDU %d accepted: %v", MaxPDUs+1, err)
	}
	for i := 0; i < MaxEDUs; i++ {
		if err := tx.AddEDU(EDU{Type: "m.typing", Content: json.RawMessage(`{}`)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.AddEDU(EDU{Type: "m.typing", Content: json.RawMessage(`{}`)}); !errors.Is(err, ErrFull) {
		t.Fatalf("EDU %d accepted: %v", MaxEDUs+1, err)
	}
}

func TestBodyPassesBytesThrough(t *testing.T) {
	pdu := json.RawMessage(`{"z":1,  "a":"\u00e9"}`) // not canonical: must stay as it is
	tx := Transaction{ID: "1/2 3", Origin: "o.example", OriginServerTS: 42, PDUs: []json.RawMessage{pdu},
		EDUs: []EDU{{Type: "m.presence", Content: json.RawMessage(`{"push":[]}`)}}}
	b, err := tx.Body()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"origin":"o.example","origin_server_ts":42,"pdus":[{"z":1,  "a":"\u00e9"}],"edus":[{"edu_type":"m.presence","content":{"push":[]}}]}`
	if string(b) != want {
		t.Fatalf("body\n%s\nwant\n%s", b, want)
	}
	if !json.Valid(b) {
		t.Fatal("body is not valid JSON")
	}
	if tx.Path() != "/_matrix/federation/v1/send/1%2F2%203" {
		t.Fatalf("path %s", tx.Path())
	}
}

func TestBodyRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		tx   Transaction
		want string
	}{
		{"no origin", Transaction{}, "origin"},
		{"pdu not object", Transaction{Origin: "o", PDUs: []json.RawMessage{json.RawMessage(`[1]`)}}, "pdu 0"},
		{"edu not object", Transaction{Origin: "o", EDUs: []EDU{{Type: "x", Content: json.RawMessage(`"s"`)}}}, "edu 0"},
		{"too many pdus", Transaction{Origin: "o", PDUs: make([]json.RawMessage, MaxPDUs+1)}, "limits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.tx.Body(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestBodyNamesTheItemThatCannotBeSent(t *testing.T) {
	good := json.RawMessage(`{"type":"m.room.message"}`)
	for _, tc := range []struct {
		name      string
		tx        Transaction
		kind      string
		index     int
		want      string
		tooLarge  bool
		canonical bool
	}{
		{"invalid pdu", Transaction{Origin: "o", PDUs: []json.RawMessage{good, json.RawMessage(`{garbage}`)}}, "pdu", 1, "expected an object key", false, true},
		{"two documents", Transaction{Origin: "o", PDUs: []json.RawMessage{json.RawMessage(`{} {}`)}}, "pdu", 0, "after the document", false, true},
		{"float in pdu", Transaction{Origin: "o", PDUs: []json.RawMessage{good, good, json.RawMessage(`{"a":0.5}`)}}, "pdu", 2, "floats", false, true},
		{"duplicate key in edu", Transaction{Origin: "o", EDUs: []EDU{{Type: "m.typing", Content: json.RawMessage(`{"a":1,"a":1}`)}}}, "edu", 0, "duplicate", false, true},
		{"edu without type", Transaction{Origin: "o", EDUs: []EDU{{Content: json.RawMessage(`{}`)}}}, "edu", 0, "no edu_type", false, false},
		{"oversized pdu", Transaction{Origin: "o", PDUs: []json.RawMessage{json.RawMessage(`{"a":"` + strings.Repeat("x", MaxPDUSize) + `"}`)}}, "pdu", 0, "limit", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.tx.Body()
			var ie *ItemError
			if !errors.As(err, &ie) || ie.Kind != tc.kind || ie.Index != tc.index || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %s %d saying %q", err, tc.kind, tc.index, tc.want)
			}
			if errors.Is(err, ErrTooLarge) != tc.tooLarge {
				t.Fatalf("errors.Is(ErrTooLarge) = %v", !tc.tooLarge)
			}
			if errors.Is(err, canonicaljson.ErrNotCanonicalizable) != tc.canonical {
				t.Fatalf("errors.Is(ErrNotCanonicalizable) = %v", !tc.canonical)
			}
		})
	}
}

func TestSizeLimits(t *testing.T) {
	var tx Transaction
	tx.Origin = "o.example"
	big := json.RawMessage(`{"a":"` + strings.Repeat("x", MaxPDUSize) + `"}`)
	if err := tx.AddPDU(big); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized PDU: %v", err)
	}
	huge := EDU{Type: "m.direct_to_device", Content: json.RawMessage(`{"a":"` + strings.Repeat("x", MaxBodySize) + `"}`)}
	if err := tx.AddEDU(huge); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("EDU larger than any body: %v", err)
	}
	// EDUs have no size limit of their own; the body limit fills the transaction.
	chunk := EDU{Type: "m.direct_to_device", Content: json.RawMessage(`{"a":"` + strings.Repeat("x", MaxBodySize/10) + `"}`)}
	added := 0
	for ; added < MaxEDUs; added++ {
		if err := tx.AddEDU(chunk); err != nil {
			if !errors.Is(err, ErrFull) {
				t.Fatalf("EDU %d: %v", added, err)
			}
			break
		}
	}
	if added != 9 {
		t.Fatalf("added %d EDUs of a tenth of the limit, want 9", added)
	}
	b, err := tx.Body()
	if err != nil || len(b) > MaxBodySize {
		t.Fatalf("body of %d bytes: %v", len(b), err)
	}
}

func TestParseResponse(t *testing.T) {
	r, err := ParseResponse([]byte(`{"pdus":{"$a":{},"$b":{"error":"bad sig"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if e := r.Errors(); len(e) != 1 || e["$b"] != "bad sig" {
		t.Fatalf("errors %v", e)
	}
	if r, err := ParseResponse([]byte(`{}`)); err != nil || len(r.PDUs) != 0 {
		t.Fatalf("empty object: %v %v", r, err)
	}
	for _, bad := range []string{``, `[]`, `null`, `{"pdus":[1]}`, `{"pdus":`} {
		if _, err := ParseResponse([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func ExampleTransaction_Body() {
	tx := Transaction{ID: "1", Origin: "example.org", OriginServerTS: 1, PDUs: []json.RawMessage{json.RawMessage(`{"type":"m.room.message"}`)}}
	b, _ := tx.Body()
	fmt.Println(string(b))
	// Output: {"origin":"example.org","origin_server_ts":1,"pdus":[{"type":"m.room.message"}],"edus":[]}
}
