package routing

import (
	"slices"
	"testing"
)

const our = "hs.test"

func strp(s string) *string { return &s }

// change is a membership delta applied before the routed event.
type change struct{ user, membership string }

func TestPDUDestinations(t *testing.T) {
	for _, tc := range []struct {
		name    string
		history []change
		ev      Event
		want    []string
	}{
		{
			name:    "local message in a room with three remote servers",
			history: []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}, {"@c:two.test", "join"}, {"@d:three.test", "join"}},
			ev:      Event{Origin: our, Type: "m.room.message"},
			want:    []string{"one.test", "three.test", "two.test"},
		},
		{
			name:    "remote-origin event goes nowhere",
			history: []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}, {"@c:two.test", "join"}},
			ev:      Event{Origin: "one.test", Type: "m.room.message"},
			want:    []string{},
		},
		{
			name:    "remote-origin membership event goes nowhere either",
			history: []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}},
			ev:      Event{Origin: "one.test", Type: "m.room.member", StateKey: strp("@x:two.test")},
			want:    []string{},
		},
		{
			name:    "local kick of a remote user reaches the kicked server",
			history: []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}, {"@c:two.test", "join"}},
			// The state before the kick still has @c joined; after the kick's
			// delta two.test is gone, but the kick itself must reach it.
			ev:   Event{Origin: our, Type: "m.room.member", StateKey: strp("@c:two.test")},
			want: []string{"one.test", "two.test"},
		},
		{
			name:    "local invite of a user on a server not in the room reaches that server",
			history: []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}},
			ev:      Event{Origin: our, Type: "m.room.member", StateKey: strp("@v:new.test")},
			want:    []string{"new.test", "one.test"},
		},
		{
			name:    "last user of a server leaves: the server is gone for later events",
			history: []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}, {"@c:two.test", "join"}, {"@c:two.test", "leave"}},
			ev:      Event{Origin: our, Type: "m.room.message"},
			want:    []string{"one.test"},
		},
		{
			name:    "server with two users, one leaves: still joined",
			history: []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}, {"@b2:one.test", "join"}, {"@b:one.test", "leave"}},
			ev:      Event{Origin: our, Type: "m.room.message"},
			want:    []string{"one.test"},
		},
		{
			name:    "banned and removed memberships are not joined",
			history: []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}, {"@c:two.test", "join"}, {"@b:one.test", "ban"}, {"@c:two.test", ""}},
			ev:      Event{Origin: our, Type: "m.room.message"},
			want:    []string{},
		},
		{
			name:    "invited and knocking users do not make their server joined",
			history: []change{{"@a:hs.test", "join"}, {"@b:one.test", "invite"}, {"@c:two.test", "knock"}},
			ev:      Event{Origin: our, Type: "m.room.message"},
			want:    []string{},
		},
		{
			name:    "own server is never a destination, even as a membership target",
			history: []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}},
			ev:      Event{Origin: our, Type: "m.room.member", StateKey: strp("@new:hs.test")},
			want:    []string{"one.test"},
		},
		{
			name:    "membership target already joined appears once",
			history: []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}, {"@c:two.test", "join"}},
			ev:      Event{Origin: our, Type: "m.room.member", StateKey: strp("@b:one.test")},
			want:    []string{"one.test", "two.test"},
		},
		{
			name:    "a non-member state event's state key is not a destination",
			history: []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}},
			ev:      Event{Origin: our, Type: "m.room.power_levels", StateKey: strp("@x:two.test")},
			want:    []string{"one.test"},
		},
		{
			name:    "membership target that is not a user ID is ignored",
			history: []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}},
			ev:      Event{Origin: our, Type: "m.room.member", StateKey: strp("not-a-user")},
			want:    []string{"one.test"},
		},
		{
			name:    "server names with ports are distinct servers",
			history: []change{{"@a:hs.test", "join"}, {"@b:one.test:8448", "join"}, {"@c:one.test", "join"}},
			ev:      Event{Origin: our, Type: "m.room.message"},
			want:    []string{"one.test", "one.test:8448"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewRoomState()
			for _, c := range tc.history {
				s.Apply(c.user, c.membership)
			}
			got := PDUDestinations(s, our, tc.ev)
			if got == nil {
				got = []string{}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("destinations = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestPDUDestinationsDoesNotModifyState(t *testing.T) {
	s := NewRoomState("@b:one.test", "@c:three.test")
	_ = PDUDestinations(s, our, Event{Origin: our, Type: TypeMember, StateKey: strp("@x:two.test")})
	if got := s.JoinedServers(); !slices.Equal(got, []string{"one.test", "three.test"}) {
		t.Fatalf("joined servers changed to %q", got)
	}
}
