package edu

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/presence"
	"github.com/fedpipe/fedpipe/federation/txn"
)

func TestPresenceFormat(t *testing.T) {
	yes, empty := true, ""
	for _, tc := range []struct {
		name string
		in   PresenceUpdate
		want string
	}{
		{"online active", NewPresenceUpdate("@a:x", Online, 5, true, ""), `{"user_id":"@a:x","presence":"online","last_active_ago":5,"currently_active":true}`},
		{"online idle keeps false", NewPresenceUpdate("@a:x", Online, 5, false, ""), `{"user_id":"@a:x","presence":"online","last_active_ago":5,"currently_active":false}`},
		{"offline drops currently_active", NewPresenceUpdate("@a:x", Offline, 9, true, "gone"), `{"user_id":"@a:x","presence":"offline","last_active_ago":9,"status_msg":"gone"}`},
		{"hand-built offline with currently_active", PresenceUpdate{UserID: "@a:x", Presence: Unavailable, CurrentlyActive: &yes, StatusMsg: &empty}, `{"user_id":"@a:x","presence":"unavailable","last_active_ago":0}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := Presence{Push: []PresenceUpdate{tc.in}}.EDU()
			if err != nil {
				t.Fatal(err)
			}
			if want := `{"push":[` + tc.want + `]}`; e.Type != TypePresence || string(e.Content) != want {
				t.Fatalf("%s %s, want %s", e.Type, e.Content, want)
			}
		})
	}
	e, err := Presence{}.EDU()
	if err != nil || string(e.Content) != `{"push":[]}` {
		t.Fatalf("empty presence: %s %v", e.Content, err)
	}
}

func TestEDUFormats(t *testing.T) {
	for _, tc := range []struct {
		name string
		edu  interface{ EDU() (txn.EDU, error) }
		typ  string
		want string
	}{
		{"typing", Typing{RoomID: "!r:x", UserID: "@a:x", Typing: false}, TypeTyping, `{"room_id":"!r:x","user_id":"@a:x","typing":false}`},
		{"receipt", Receipt{"!r:x": {Read: map[string]UserReceipt{"@a:x": {EventIDs: []string{"$e"}, Data: ReceiptData{TS: 7}}}}}, TypeReceipt,
			`{"!r:x":{"m.read":{"@a:x":{"event_ids":["$e"],"data":{"ts":7}}}}}`},
		{"threaded receipt", Receipt{"!r:x": {Read: map[string]UserReceipt{"@a:x": {EventIDs: []string{"$e"}, Data: ReceiptData{TS: 7, ThreadID: "main"}}}}}, TypeReceipt,
			`{"!r:x":{"m.read":{"@a:x":{"event_ids":["$e"],"data":{"ts":7,"thread_id":"main"}}}}}`},
		{"device deleted", DeviceListUpdate{UserID: "@a:x", DeviceID: "D", StreamID: 3, PrevID: []int64{2}, Deleted: true}, TypeDeviceListUpdate,
			`{"user_id":"@a:x","device_id":"D","stream_id":3,"prev_id":[2],"deleted":true}`},
		{"to-device", DirectToDevice{Sender: "@a:x", Type: "m.room_key", MessageID: "m1", Messages: map[string]map[string]json.RawMessage{"@b:y": {"*": json.RawMessage(`{"k":1}`)}}}, TypeDirectToDevice,
			`{"sender":"@a:x","type":"m.room_key","message_id":"m1","messages":{"@b:y":{"*":{"k":1}}}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := tc.edu.EDU()
			if err != nil {
				t.Fatal(err)
			}
			if e.Type != tc.typ || string(e.Content) != tc.want {
				t.Fatalf("%s %s, want %s %s", e.Type, e.Content, tc.typ, tc.want)
			}
		})
	}
}

func TestEDURejectsBadContent(t *testing.T) {
	for _, tc := range []struct {
		name string
		edu  interface{ EDU() (txn.EDU, error) }
		want string
	}{
		{"unknown presence", Presence{Push: []PresenceUpdate{{UserID: "@a:x", Presence: "asleep"}}}, "asleep"},
		{"presence without user", Presence{Push: []PresenceUpdate{{Presence: Online}}}, "user_id"},
		{"negative last active", Presence{Push: []PresenceUpdate{{UserID: "@a:x", Presence: Online, LastActiveAgo: -1}}}, "negative"},
		{"typing without room", Typing{UserID: "@a:x"}, "room_id"},
		{"receipt without events", Receipt{"!r:x": {Read: map[string]UserReceipt{"@a:x": {}}}}, "event_ids"},
		{"empty receipt", Receipt{}, "no rooms"},
		{"device without id", DeviceListUpdate{UserID: "@a:x"}, "device_id"},
		{"device keys not object", DeviceListUpdate{UserID: "@a:x", DeviceID: "D", Keys: json.RawMessage(`[1]`)}, "keys"},
		{"to-device without message id", DirectToDevice{Sender: "@a:x", Type: "t"}, "message_id"},
		{"to-device message not object", DirectToDevice{Sender: "@a:x", Type: "t", MessageID: "m", Messages: map[string]map[string]json.RawMessage{"@b:y": {"D": json.RawMessage(`"s"`)}}}, "not a JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.edu.EDU()
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want ErrInvalid mentioning %q", err, tc.want)
			}
		})
	}
}

func TestPresenceStateIsAgedWhenRendered(t *testing.T) {
	now := time.UnixMilli(1_700_000_060_000)
	brb := "brb"
	for _, tc := range []struct {
		name string
		in   presence.State
		want string
	}{
		{"online, active a minute ago", presence.State{UserID: "@a:x", Presence: Online, LastActiveTS: 1_700_000_000_000, CurrentlyActive: true},
			`{"user_id":"@a:x","presence":"online","last_active_ago":60000,"currently_active":true}`},
		{"unavailable with status", presence.State{UserID: "@a:x", Presence: Unavailable, LastActiveTS: 1_700_000_059_000, CurrentlyActive: true, StatusMsg: &brb},
			`{"user_id":"@a:x","presence":"unavailable","last_active_ago":1000,"status_msg":"brb"}`},
		{"last active after now (clock skew)", presence.State{UserID: "@a:x", Presence: Offline, LastActiveTS: 1_700_000_061_000},
			`{"user_id":"@a:x","presence":"offline","last_active_ago":0}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := Presence{Push: []PresenceUpdate{PresenceUpdateAt(tc.in, now)}}.EDU()
			if err != nil {
				t.Fatal(err)
			}
			if want := `{"push":[` + tc.want + `]}`; string(e.Content) != want {
				t.Fatalf("%s, want %s", e.Content, want)
			}
		})
	}
}
