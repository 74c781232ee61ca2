package sender

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/presence"
)

// An m.presence EDU record is read back into states aged from when it is
// read; content no m.presence EDU may have is refused.
func TestPresenceEDUStates(t *testing.T) {
	now := time.UnixMilli(1_700_000_060_000)
	e, _ := edu.Presence{Push: []edu.PresenceUpdate{edu.NewPresenceUpdate("@a:x", edu.Online, 60000, true, "hi"), edu.NewPresenceUpdate("@b:x", edu.Offline, 5, false, "")}}.EDU()
	got, err := presenceEDUStates(e.Content, now)
	if err != nil {
		t.Fatal(err)
	}
	want := []presence.State{{UserID: "@a:x", Presence: edu.Online, StatusMsg: new("hi"), LastActiveTS: 1_700_000_000_000, CurrentlyActive: true}, {UserID: "@b:x", Presence: edu.Offline, LastActiveTS: 1_700_000_059_995}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%+v, want %+v", got, want)
	}
	for name, bad := range map[string]string{
		"not JSON":          `{`,
		"no push":           `{}`,
		"unknown state":     `{"push":[{"user_id":"@a:x","presence":"asleep","last_active_ago":1}]}`,
		"no user":           `{"push":[{"presence":"online","last_active_ago":1}]}`,
		"negative age":      `{"push":[{"user_id":"@a:x","presence":"online","last_active_ago":-1}]}`,
		"push not an array": `{"push":{}}`,
	} {
		if _, err := presenceEDUStates(json.RawMessage(bad), now); !errors.Is(err, edu.ErrInvalid) {
			t.Errorf("%s: %v, want edu.ErrInvalid", name, err)
		}
	}
}
