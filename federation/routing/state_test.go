package routing

import (
	"slices"
	"testing"
)

func TestRoomStateApply(t *testing.T) {
	for _, tc := range []struct {
		name        string
		steps       []change
		wantChanged []bool
		wantServers []string
		wantUsers   []string
	}{
		{
			name:        "join then displayname change stores one change",
			steps:       []change{{"@b:one.test", "join"}, {"@b:one.test", "join"}},
			wantChanged: []bool{true, false},
			wantServers: []string{"one.test"},
			wantUsers:   []string{"@b:one.test"},
		},
		{
			name:        "invite then reject changes nothing",
			steps:       []change{{"@b:one.test", "invite"}, {"@b:one.test", "leave"}},
			wantChanged: []bool{false, false},
			wantServers: []string{},
			wantUsers:   []string{},
		},
		{
			name:        "two users of one server, both leave",
			steps:       []change{{"@b:one.test", "join"}, {"@c:one.test", "join"}, {"@b:one.test", "leave"}, {"@c:one.test", "ban"}},
			wantChanged: []bool{true, true, true, true},
			wantServers: []string{},
			wantUsers:   []string{},
		},
		{
			name:        "rejoin after leave",
			steps:       []change{{"@b:one.test", "join"}, {"@b:one.test", "leave"}, {"@b:one.test", "join"}},
			wantChanged: []bool{true, true, true},
			wantServers: []string{"one.test"},
			wantUsers:   []string{"@b:one.test"},
		},
		{
			name:        "state key that is not a user is ignored",
			steps:       []change{{"bogus", "join"}},
			wantChanged: []bool{false},
			wantServers: []string{},
			wantUsers:   []string{},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewRoomState()
			for i, st := range tc.steps {
				if got := s.Apply(st.user, st.membership); got != tc.wantChanged[i] {
					t.Errorf("step %d Apply(%s, %s) = %v, want %v", i, st.user, st.membership, got, tc.wantChanged[i])
				}
			}
			if got := s.JoinedServers(); !slices.Equal(got, tc.wantServers) {
				t.Errorf("JoinedServers = %q, want %q", got, tc.wantServers)
			}
			if got := s.JoinedUsers(); !slices.Equal(got, tc.wantUsers) {
				t.Errorf("JoinedUsers = %q, want %q", got, tc.wantUsers)
			}
			if s.Len() != len(tc.wantUsers) {
				t.Errorf("Len = %d, want %d", s.Len(), len(tc.wantUsers))
			}
			for _, srv := range tc.wantServers {
				if !s.ServerJoined(srv) {
					t.Errorf("ServerJoined(%s) = false", srv)
				}
			}
		})
	}
}
