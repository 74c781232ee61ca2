package presence

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	for name, tc := range map[string]struct {
		s  State
		ok bool
	}{
		"online":           {State{UserID: "@a:x", Presence: Online}, true},
		"unavailable":      {State{UserID: "@a:x", Presence: Unavailable}, true},
		"offline":          {State{UserID: "@a:x", Presence: Offline}, true},
		"no user":          {State{Presence: Online}, false},
		"unknown presence": {State{UserID: "@a:x", Presence: "asleep"}, false},
		"no presence":      {State{UserID: "@a:x"}, false},
	} {
		err := tc.s.Check()
		if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Check() = %v, want ok=%v", name, err, tc.ok)
		}
	}
}

// The stage's timer fields never reach a record.
func TestStateJSONLeavesOutTimerFields(t *testing.T) {
	msg := "hi"
	b, err := json.Marshal(State{UserID: "@a:x", Presence: Online, StatusMsg: &msg, LastActiveTS: 5, CurrentlyActive: true, LastUserSyncTS: 6, LastFederationUpdateTS: 7})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"user_id":"@a:x","presence":"online","status_msg":"hi","last_active_ts":5,"currently_active":true}`; string(b) != want {
		t.Fatalf("%s\nwant %s", b, want)
	}
}

func TestOnJoin(t *testing.T) {
	for _, tc := range []struct {
		name       string
		server     string
		wasJoined  bool
		announcing Announcement
	}{
		{"local user joins", "hs", true, AnnounceUser},
		{"local user joins a room without local users", "hs", false, AnnounceUser},
		{"remote server joins a room it was not in", "remote", false, AnnounceRoom},
		{"another user of a joined remote server", "remote", true, AnnounceNothing},
	} {
		if got := OnJoin(tc.server, "hs", tc.wasJoined); got != tc.announcing {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.announcing)
		}
	}
	if got := RemoteServers([]string{"a", "hs", "b"}, "hs"); strings.Join(got, ",") != "a,b" {
		t.Errorf("remote servers %v, want a, b", got)
	}
}

func TestForNewServerLeavesOutStaleOfflineAndUnjoined(t *testing.T) {
	now := time.UnixMilli(1_800_000_000_000)
	eightDays := now.Add(-8 * 24 * time.Hour).UnixMilli()
	sixDays := now.Add(-6 * 24 * time.Hour).UnixMilli()
	msg, empty := "away", ""
	states := []State{
		{UserID: "@on", Presence: Online, LastActiveTS: eightDays},
		{UserID: "@gone", Presence: Offline, LastActiveTS: eightDays},
		{UserID: "@gone_empty_status", Presence: Offline, StatusMsg: &empty, LastActiveTS: eightDays},
		{UserID: "@away", Presence: Offline, StatusMsg: &msg, LastActiveTS: eightDays},
		{UserID: "@recent", Presence: Offline, LastActiveTS: sixDays},
		{UserID: "@left", Presence: Online, LastActiveTS: sixDays},
	}
	got := ForNewServer(states, func(u string) bool { return u != "@left" }, now)
	var users []string
	for _, s := range got {
		users = append(users, s.UserID)
	}
	if want := "@on,@away,@recent"; strings.Join(users, ",") != want {
		t.Fatalf("sent %v, want %s", users, want)
	}
}

func TestSplitBoundsCountAndBytes(t *testing.T) {
	states := func(n, msgBytes int) []State {
		msg := strings.Repeat("x", msgBytes)
		out := make([]State, n)
		for i := range out {
			out[i] = State{UserID: "@u:x", Presence: Online, StatusMsg: &msg}
		}
		return out
	}
	lens := func(runs [][]State) []int {
		var out []int
		for _, r := range runs {
			out = append(out, len(r))
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		states []State
		want   []int
	}{
		{"none", nil, nil},
		{"small, by count", states(450, 10), []int{200, 200, 50}},
		{"large, by bytes", states(5, 200<<10), []int{2, 2, 1}},
		{"one larger than the bound alone", states(3, 600<<10), []int{1, 1, 1}},
	} {
		got := lens(Split(tc.states))
		if len(got) != len(tc.want) {
			t.Errorf("%s: runs of %v, want %v", tc.name, got, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("%s: runs of %v, want %v", tc.name, got, tc.want)
				break
			}
		}
	}
}
