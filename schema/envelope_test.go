package schema_test

import (
	"encoding/json"
	"testing"

	"github.com/fedpipe/fedpipe/schema"
)

// A record's bytes are fixed: fields in struct order, "<", ">" and "&" in
// strings left as they are (no HTML escaping), the PDU spliced in byte for
// byte (spacing and escapes kept), and no trailing newline.
func TestMarshalBytes(t *testing.T) {
	sk := "@a&b:hs.test"
	v, err := schema.RoomRecord{V: 1, Kind: schema.KindEvent, Position: 5, RoomID: "!r<1>:hs.test", RoomVersion: "10", EventID: "$e", Sender: "@a:hs.test",
		Origin: "hs.test", Type: "m.room.member", StateKey: &sk, PDU: json.RawMessage(`{"body": "<i>x</i>", "u":"\u00e9"}`)}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"v":1,"kind":"event","position":5,"room_id":"!r<1>:hs.test","room_version":"10","event_id":"$e","sender":"@a:hs.test","origin":"hs.test","type":"m.room.member","state_key":"@a&b:hs.test","pdu":{"body": "<i>x</i>", "u":"\u00e9"}}`
	if string(v) != want {
		t.Errorf("Marshal =\n%s\nwant\n%s", v, want)
	}
	if _, err := (schema.RoomRecord{V: 1, Kind: schema.KindEvent, PDU: json.RawMessage(`{"a":`)}).Marshal(); err == nil {
		t.Error("a PDU that is not JSON was spliced in")
	}
}
