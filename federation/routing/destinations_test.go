package routing

import (
	"slices"
	"testing"
)

const our = "hs.test"

func strp(s string) *string { return &s }

// change is a membership delta applied before the routed event.
type change struct{ user, membership string }

// TestPDUDestinations routes an event from the state before it, then applies
// the event's own membership change (if any) and routes a local message after
// it: the event goes to the servers joined before it, whatever its type,
// membership or target.
func TestPDUDestinations(t *testing.T) {
	for _, tc := range []struct {
		name    string
		history []change
		origin  string
		// own is the event's own membership change, applied after routing it.
		own       *change
		want      []string
		wantAfter []string // a local message after the event
	}{
		{
			name:      "local message in a room with three remote servers",
			history:   []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}, {"@c:two.test", "join"}, {"@d:three.test", "join"}},
			origin:    our,
			want:      []string{"one.test", "three.test", "two.test"},
			wantAfter: []string{"one.test", "three.test", "two.test"},
		},
		{
			name:      "remote-origin event goes nowhere",
			history:   []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}, {"@c:two.test", "join"}},
			origin:    "one.test",
			want:      []string{},
			wantAfter: []string{"one.test", "two.test"},
		},
		{
			name:      "remote-origin membership event goes nowhere either, and its change counts",
			history:   []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}},
			origin:    "two.test",
			own:       &change{"@x:two.test", "join"},
			want:      []string{},
			wantAfter: []string{"one.test", "two.test"},
		},
		{
			name:    "local kick of a server's last joined user reaches that server, and nothing after",
			history: []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}, {"@c:two.test", "join"}},
			origin:  our,
			own:     &change{"@c:two.test", "leave"},
			// Routed from the state after the kick, two.test would miss it.
			want:      []string{"one.test", "two.test"},
			wantAfter: []string{"one.test"},
		},
		{
			name:      "local ban of a server's last joined user reaches that server",
			history:   []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}, {"@c:two.test", "join"}},
			origin:    our,
			own:       &change{"@c:two.test", "ban"},
			want:      []string{"one.test", "two.test"},
			wantAfter: []string{"one.test"},
		},
		{
			name:      "local invite of a user whose server has no joined member reaches no extra server",
			history:   []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}},
			origin:    our,
			own:       &change{"@v:new.test", "invite"},
			want:      []string{"one.test"},
			wantAfter: []string{"one.test"},
		},
		{
			name:      "pre-emptive ban of a user whose server has no joined member reaches no extra server",
			history:   []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}},
			origin:    our,
			own:       &change{"@z:new.test", "ban"},
			want:      []string{"one.test"},
			wantAfter: []string{"one.test"},
		},
		{
			name:      "ban of a user whose server already left reaches no extra server",
			history:   []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}, {"@c:two.test", "join"}, {"@c:two.test", "leave"}},
			origin:    our,
			own:       &change{"@c:two.test", "ban"},
			want:      []string{"one.test"},
			wantAfter: []string{"one.test"},
		},
		{
			name:      "knock naming a user whose server has no joined member reaches no extra server",
			history:   []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}},
			origin:    our,
			own:       &change{"@k:new.test", "knock"},
			want:      []string{"one.test"},
			wantAfter: []string{"one.test"},
		},
		{
			name:      "invite of a user whose server is joined reaches it as a joined server",
			history:   []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}},
			origin:    our,
			own:       &change{"@v:one.test", "invite"},
			want:      []string{"one.test"},
			wantAfter: []string{"one.test"},
		},
		{
			name:      "local user's join reaches the servers already joined",
			history:   []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}},
			origin:    our,
			own:       &change{"@new:hs.test", "join"},
			want:      []string{"one.test"},
			wantAfter: []string{"one.test"},
		},
		{
			name:      "room creator's first events go nowhere: no server is joined before them",
			origin:    our,
			own:       &change{"@a:hs.test", "join"},
			want:      []string{},
			wantAfter: []string{},
		},
		{
			name:      "last user of a server leaves: the server is gone for later events",
			history:   []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}, {"@c:two.test", "join"}, {"@c:two.test", "leave"}},
			origin:    our,
			want:      []string{"one.test"},
			wantAfter: []string{"one.test"},
		},
		{
			name:      "server with two users, one is kicked: still joined",
			history:   []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}, {"@b2:one.test", "join"}},
			origin:    our,
			own:       &change{"@b:one.test", "leave"},
			want:      []string{"one.test"},
			wantAfter: []string{"one.test"},
		},
		{
			name:      "banned and removed memberships are not joined",
			history:   []change{{"@a:hs.test", "join"}, {"@b:one.test", "join"}, {"@c:two.test", "join"}, {"@b:one.test", "ban"}, {"@c:two.test", ""}},
			origin:    our,
			want:      []string{},
			wantAfter: []string{},
		},
		{
			name:      "invited and knocking users do not make their server joined",
			history:   []change{{"@a:hs.test", "join"}, {"@b:one.test", "invite"}, {"@c:two.test", "knock"}},
			origin:    our,
			want:      []string{},
			wantAfter: []string{},
		},
		{
			name:      "server names with ports are distinct servers",
			history:   []change{{"@a:hs.test", "join"}, {"@b:one.test:8448", "join"}, {"@c:one.test", "join"}},
			origin:    our,
			want:      []string{"one.test", "one.test:8448"},
			wantAfter: []string{"one.test", "one.test:8448"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewRoomState()
			for _, c := range tc.history {
				s.Apply(c.user, c.membership)
			}
			if got := PDUDestinations(s, our, tc.origin); !equalDests(got, tc.want) {
				t.Errorf("destinations = %q, want %q", got, tc.want)
			}
			if tc.own != nil {
				s.Apply(tc.own.user, tc.own.membership)
			}
			if got := PDUDestinations(s, our, our); !equalDests(got, tc.wantAfter) {
				t.Errorf("destinations of the next message = %q, want %q", got, tc.wantAfter)
			}
		})
	}
}

func equalDests(got, want []string) bool {
	return len(got) == 0 && len(want) == 0 || slices.Equal(got, want)
}

// TestPDUDestinationsReturnsACopy: the router may keep or change the slice;
// the state's cached joined servers must not change with it.
func TestPDUDestinationsReturnsACopy(t *testing.T) {
	s := NewRoomState("@b:one.test", "@c:three.test")
	dests := PDUDestinations(s, our, our)
	dests[0] = "changed.test"
	if got := s.JoinedServers(); !slices.Equal(got, []string{"one.test", "three.test"}) {
		t.Fatalf("joined servers changed to %q", got)
	}
}
