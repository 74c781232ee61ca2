package relay

import (
	"encoding/json"
	"fmt"
	"strconv"
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
	room, state, _ := roomRecords(s, eventRows(t, events), deltaRows(t, deltas[12]), 130)
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
		v, err := d.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		w := s.message(d.Kind, d.Position, schema.StateKey(d.RoomID, d.Type, *d.StateKey), v)
		if fmt.Sprintf("%q %q %q", state[i].Key, state[i].Value, state[i].Headers) != fmt.Sprintf("%q %q %q", w.Key, w.Value, w.Headers) {
			t.Errorf("state record %d:\n%q %q %q\nwant\n%q %q %q", i, state[i].Key, state[i].Value, state[i].Headers, w.Key, w.Value, w.Headers)
		}
	}
}

// eventRows are events as readEvents reads them, encoded by
// RoomRecord.Marshal.
func eventRows(t *testing.T, events []schema.RoomRecord) []eventRow {
	t.Helper()
	var rows []eventRow
	for _, e := range events {
		v, err := e.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, eventRow{position: e.Position, key: []byte(e.RoomID), value: v, pos: []byte(strconv.FormatInt(e.Position, 10))})
	}
	return rows
}

// deltaRows are deltas as readDeltas reads them, encoded by
// RoomRecord.Marshal.
func deltaRows(t *testing.T, deltas []schema.RoomRecord) []deltaRow {
	t.Helper()
	var rows []deltaRow
	for _, d := range deltas {
		v, err := d.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, deltaRow{position: d.Position, key: []byte(d.RoomID), stateKey: schema.StateKey(d.RoomID, d.Type, *d.StateKey), value: v, pos: []byte(strconv.FormatInt(d.Position, 10))})
	}
	return rows
}
