package schema_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/schema"
)

// What the sender pays per outbound record and the router per room record:
// decoding and checking one, with a PDU of about 700 bytes.
//
//	go test -run '^$' -bench Decode -benchmem ./schema
func BenchmarkDecodeRecords(b *testing.B) {
	pdu := json.RawMessage(`{"auth_events":["$a","$b","$c"],"content":{"body":"` + strings.Repeat("x", 400) +
		`","msgtype":"m.text"},"depth":12,"hashes":{"sha256":"aGVsbG8"},"origin_server_ts":1700000000000,"prev_events":["$p"],"room_id":"!r:hs.test","sender":"@a:hs.test","type":"m.room.message","signatures":{"hs.test":{"ed25519:a":"c2ln"}}}`)
	out, err := schema.OutboundRecord{V: 1, Kind: schema.KindPDU, Destination: "a.test", Destinations: []string{"a.test", "b.test"},
		RoomID: "!r:hs.test", EventID: "$e", Position: 9, RoomVersion: "11", PDU: pdu}.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	room, err := schema.RoomRecord{V: 1, Kind: schema.KindEvent, Position: 9, RoomID: "!r:hs.test", RoomVersion: "11", EventID: "$e",
		Sender: "@a:hs.test", Origin: "hs.test", Type: "m.room.message", PDU: pdu}.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	b.Run("outbound", func(b *testing.B) {
		b.SetBytes(int64(len(out)))
		for b.Loop() {
			if _, err := schema.DecodeOutboundRecord(out); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("room", func(b *testing.B) {
		b.SetBytes(int64(len(room)))
		for b.Loop() {
			if _, err := schema.DecodeRoomRecord(room); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("marshal outbound", func(b *testing.B) {
		for b.Loop() {
			if _, err := (schema.OutboundRecord{V: 1, Kind: schema.KindPDU, Destination: "a.test", RoomID: "!r:hs.test", EventID: "$e", Position: 9, RoomVersion: "11", PDU: pdu}).Marshal(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
