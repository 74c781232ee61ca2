package schema_test

import (
	"encoding/json"
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
