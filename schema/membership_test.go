package schema_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/schema"
)

// A removed membership is sent as "membership":"" so that non-Go consumers see
// the removal explicitly; the schema requires membership on member deltas.
func TestRemovedMembershipIsExplicit(t *testing.T) {
	sk := "@b:remote.test"
	removed, err := schema.RoomRecord{V: 1, Kind: schema.KindStateDelta, Position: 4, RoomID: "!r:hs.test", Type: "m.room.member",
		StateKey: &sk, EventID: "", PrevEventID: "$p", PrevMembership: "join"}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(removed), `"membership":""`) {
		t.Fatalf("removed membership not explicit: %s", removed)
	}
	if err := schema.ValidateRecord("state", removed); err != nil {
		t.Fatalf("%v\n%s", err, removed)
	}
	rec, err := schema.DecodeRoomRecord(removed)
	if err != nil || rec.Membership != "" || rec.PrevMembership != "join" || rec.EventID != "" {
		t.Fatalf("decoded %+v, %v", rec, err)
	}
	topic, err := schema.RoomRecord{V: 1, Kind: schema.KindStateDelta, Position: 4, RoomID: "!r:hs.test", Type: "m.room.topic",
		StateKey: new(string), EventID: "$t"}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(topic), "membership") {
		t.Fatalf("non-member delta carries a membership: %s", topic)
	}
	if err := schema.ValidateRecord("room", topic); err != nil {
		t.Fatal(err)
	}
	missing := `{"v":1,"kind":"state_delta","position":4,"room_id":"!r:hs.test","type":"m.room.member","state_key":"@b:remote.test","event_id":"$e"}`
	if err := schema.ValidateRecord("room", []byte(missing)); !errors.Is(err, schema.ErrInvalidRecord) {
		t.Fatalf("member delta without membership accepted: %v", err)
	}
}
