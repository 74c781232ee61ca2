package relay

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/fedpipe/fedpipe/schema"
)

// roomRecords builds its records' headers from one allocation per round
// (recordHeaders); they must be exactly what every other producer writes
// through schema.Headers, and each record's own.
func TestRoomRecordHeadersAreSchemaHeaders(t *testing.T) {
	member, other := "@m:remote.test", "@o:remote.test"
	events := []schema.RoomRecord{
		{V: schema.SchemaVersion, Kind: schema.KindEvent, Position: 7, RoomID: "!a:hs.test", EventID: "$1", Type: "m.room.message", PDU: json.RawMessage(`{}`)},
		{V: schema.SchemaVersion, Kind: schema.KindEvent, Position: 12, RoomID: "!b:hs.test", EventID: "$2", Type: "m.room.member", StateKey: &member, PDU: json.RawMessage(`{}`)},
		{V: schema.SchemaVersion, Kind: schema.KindEvent, Position: 130, RoomID: "!a:hs.test", EventID: "$3", Type: "m.room.message", PDU: json.RawMessage(`{}`)},
	}
	deltas := map[int64][]schema.RoomRecord{12: {
		{V: schema.SchemaVersion, Kind: schema.KindStateDelta, Position: 12, RoomID: "!b:hs.test", EventID: "$2", Type: "m.room.member", StateKey: &member, Membership: "join"},
		{V: schema.SchemaVersion, Kind: schema.KindStateDelta, Position: 12, RoomID: "!b:hs.test", EventID: "$2", Type: "m.room.member", StateKey: &other, Membership: "leave"},
	}}
	s := span{maxBytes: 1 << 20, maxRecords: 100, instance: "relay-1"}
	room, state, _, err := roomRecords(s, events, deltas, 130)
	if err != nil {
		t.Fatal(err)
	}
	want := []schema.RoomRecord{events[0], events[1], deltas[12][0], deltas[12][1], events[2]}
	if len(room) != len(want) || len(state) != 2 {
		t.Fatalf("%d room and %d state records, want %d and 2", len(room), len(state), len(want))
	}
	for i, rec := range want {
		v, err := rec.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		w := s.message(rec.Kind, rec.Position, []byte(rec.RoomID), v)
		if fmt.Sprintf("%q %q %q", room[i].Key, room[i].Value, room[i].Headers) != fmt.Sprintf("%q %q %q", w.Key, w.Value, w.Headers) {
			t.Errorf("room record %d:\n%q %q %q\nwant\n%q %q %q", i, room[i].Key, room[i].Value, room[i].Headers, w.Key, w.Value, w.Headers)
		}
	}
	for i, d := range deltas[12] {
		if got, want := fmt.Sprintf("%q", state[i].Headers), fmt.Sprintf("%q", s.message(d.Kind, d.Position, nil, nil).Headers); got != want {
			t.Errorf("state record %d headers %s, want %s", i, got, want)
		}
	}
}
