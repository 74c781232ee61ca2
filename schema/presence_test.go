package schema_test

import (
	"errors"
	"testing"

	"github.com/fedpipe/fedpipe/schema"
)

func TestPresenceRecordsValidate(t *testing.T) {
	yes, msg := true, "in a <meeting> & away"
	state := schema.PresenceState{UserID: "@a:hs.test", Presence: "online", StatusMsg: &msg, LastActiveTS: 1700000000000, CurrentlyActive: true}
	good := []struct {
		stream string
		rec    interface{ Marshal() ([]byte, error) }
	}{
		{"usersync", schema.UserSyncRecord{V: 1, Kind: schema.KindUserSync, Instance: "sync1", UserID: "@a:hs.test", Syncing: &yes, TS: 5}},
		{"usersync", schema.UserSyncRecord{V: 1, Kind: schema.KindUserActive, Instance: "sync1", UserID: "@a:hs.test", TS: 5}},
		{"usersync", schema.UserSyncRecord{V: 1, Kind: schema.KindSetPresence, Instance: "sync1", UserID: "@a:hs.test", Presence: "unavailable", StatusMsg: &msg, TS: 5}},
		{"usersync", schema.UserSyncRecord{V: 1, Kind: schema.KindInstanceClear, Instance: "sync1", TS: 5}},
		{"usersync", schema.UserSyncRecord{V: 1, Kind: schema.KindInstanceAlive, Instance: "sync1", TS: 5}},
		{"presence", schema.PresenceRecord{V: 1, Kind: schema.KindPresence, Position: 9, PresenceState: state}},
		{"outbound", schema.OutboundRecord{V: 1, Kind: schema.KindPresence, Destination: "remote.test", Presence: []schema.PresenceState{state, {UserID: "@b:hs.test", Presence: "offline"}}}},
	}
	for _, g := range good {
		raw, err := g.rec.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := schema.ValidateRecord(g.stream, raw); err != nil {
			t.Errorf("%s: %v\n%s", g.stream, err, raw)
		}
		var derr error
		switch g.stream {
		case "usersync":
			_, derr = schema.DecodeUserSyncRecord(raw)
		case "presence":
			_, derr = schema.DecodePresenceRecord(raw)
		case "outbound":
			_, derr = schema.DecodeOutboundRecord(raw)
		}
		if derr != nil {
			t.Errorf("decoding %s: %v", raw, derr)
		}
	}
	for _, bad := range []struct{ stream, raw string }{
		{"usersync", `{"v":1,"kind":"user_sync","instance":"s","user_id":"@a:hs","ts":1}`},
		{"usersync", `{"v":1,"kind":"user_sync","instance":"","user_id":"@a:hs","syncing":true,"ts":1}`},
		{"usersync", `{"v":1,"kind":"set_presence","instance":"s","user_id":"@a:hs","presence":"busy","ts":1}`},
		{"usersync", `{"v":1,"kind":"user_active","instance":"s","user_id":"alice","ts":1}`},
		{"usersync", `{"v":1,"kind":"shutdown","instance":"s","ts":1}`},
		{"presence", `{"v":1,"kind":"presence","position":0,"user_id":"@a:hs","presence":"online","last_active_ts":1,"currently_active":true}`},
		{"presence", `{"v":1,"kind":"presence","position":3,"user_id":"@a:hs","presence":"away","last_active_ts":1,"currently_active":true}`},
		{"outbound", `{"v":1,"kind":"presence","destination":"d","presence":[]}`},
		{"outbound", `{"v":1,"kind":"presence","destination":"d","presence":[{"user_id":"a","presence":"online","last_active_ts":1,"currently_active":false}]}`},
	} {
		if err := schema.ValidateRecord(bad.stream, []byte(bad.raw)); !errors.Is(err, schema.ErrInvalidRecord) {
			t.Errorf("schema accepted %s: %v", bad.raw, err)
		}
		var derr error
		switch bad.stream {
		case "usersync":
			_, derr = schema.DecodeUserSyncRecord([]byte(bad.raw))
		case "presence":
			_, derr = schema.DecodePresenceRecord([]byte(bad.raw))
		case "outbound":
			_, derr = schema.DecodeOutboundRecord([]byte(bad.raw))
		}
		if !errors.Is(derr, schema.ErrInvalidRecord) {
			t.Errorf("decoder accepted %s: %v", bad.raw, derr)
		}
	}
}
