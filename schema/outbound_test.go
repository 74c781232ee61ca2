package schema_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/schema"
)

// Outbound records built the way producers build them (Marshal, not
// json.Marshal) pass their schema, keep their raw bytes, and decode back.
func TestOutboundMarshalValidates(t *testing.T) {
	raw := json.RawMessage("{\"body\": \"<b>&</b>\",\n \"n\": 1.50}")
	for _, rec := range []schema.OutboundRecord{
		{V: 1, Kind: schema.KindPDU, Destination: "remote.test:8448", RoomID: "!r:hs.test", EventID: "$e", Position: 9, RoomVersion: "11", PDU: raw},
		{V: 1, Kind: schema.KindEDU, Destination: "[::1]:8448", EDUType: "m.presence", Content: raw},
	} {
		v, err := rec.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := schema.ValidateRecord("outbound", v); err != nil {
			t.Fatalf("%s: %v\n%s", rec.Kind, err, v)
		}
		if !strings.Contains(string(v), string(raw)) {
			t.Fatalf("%s: raw bytes changed: %s", rec.Kind, v)
		}
		back, err := schema.DecodeOutboundRecord(v)
		if err != nil || back.Destination != rec.Destination || back.Kind != rec.Kind {
			t.Fatalf("%s: decoded %+v, %v", rec.Kind, back, err)
		}
	}
}

// A pdu record may list the destinations of its partition; the list starts
// with the key's destination, names each once, and is refused on other kinds.
func TestOutboundRecordDestinations(t *testing.T) {
	pdu := func(dest string, dests ...string) schema.OutboundRecord {
		return schema.OutboundRecord{V: 1, Kind: schema.KindPDU, Destination: dest, Destinations: dests,
			RoomID: "!r:hs.test", EventID: "$e", Position: 9, RoomVersion: "11", PDU: json.RawMessage(`{}`)}
	}
	many := make([]string, schema.MaxRecordDestinations+1)
	for i := range many {
		many[i] = fmt.Sprintf("s%d.test", i)
	}
	edu := schema.OutboundRecord{V: 1, Kind: schema.KindEDU, Destination: "a.test", Destinations: []string{"a.test", "b.test"}, EDUType: "m.typing", Content: json.RawMessage(`{}`)}
	for _, c := range []struct {
		name    string
		rec     schema.OutboundRecord
		targets []string // nil: refused
	}{
		{"none: the destination alone", pdu("a.test"), []string{"a.test"}},
		{"several, the key first", pdu("a.test", "a.test", "b.test", "c.test:8448"), []string{"a.test", "b.test", "c.test:8448"}},
		{"not starting with the key", pdu("a.test", "b.test", "a.test"), nil},
		{"a destination twice", pdu("a.test", "a.test", "b.test", "b.test"), nil},
		{"an empty one", pdu("a.test", "a.test", ""), nil},
		{"a NUL byte", pdu("a.test", "a.test", "b\x00.test"), nil},
		{"more than the bound", pdu(many[0], many...), nil},
		{"on an edu record", edu, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, err := c.rec.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			got, err := schema.DecodeOutboundRecord(v)
			verr := schema.ValidateRecord("outbound", v)
			if c.targets == nil {
				if err == nil {
					t.Fatalf("accepted: %s", v)
				}
				return
			}
			if err != nil || verr != nil {
				t.Fatalf("refused: %v / schema: %v", err, verr)
			}
			if !slices.Equal(got.Targets(), c.targets) {
				t.Fatalf("targets %v, want %v", got.Targets(), c.targets)
			}
		})
	}
}
