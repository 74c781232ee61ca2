package routing

import (
	"slices"
	"testing"
)

func TestPositionsDelta(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    Positions
		pos  int64
		want DeltaAction
	}{
		{"fresh room", Positions{}, 5, DeltaApplyAndStore},
		{"live delta after the stored state", Positions{Applied: 5, Stored: 5}, 9, DeltaApplyAndStore},
		{"second delta of the stored position is stored again, idempotently", Positions{Applied: 5, Stored: 5}, 5, DeltaApplyAndStore},
		{"replayed delta older than memory is skipped", Positions{Applied: 9, Stored: 9}, 5, DeltaSkip},
		{"replay after a rewind moves memory forward without storing", Positions{Applied: 4, Stored: 9}, 5, DeltaApply},
		{"replay catches up with the stored position", Positions{Applied: 8, Stored: 9}, 9, DeltaApplyAndStore},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.p.Delta(tc.pos); got != tc.want {
				t.Errorf("Delta(%d) = %v, want %v", tc.pos, got, tc.want)
			}
		})
	}
}

func TestPositionsNeedsRewind(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    Positions
		pos  int64
		want bool
	}{
		{"live event after its room's last delta", Positions{Applied: 5, Stored: 5}, 6, false},
		{"fresh room", Positions{}, 1, false},
		{"replayed event whose own delta was stored before a crash", Positions{Applied: 6, Stored: 6}, 6, true},
		{"event replayed from offset zero", Positions{Applied: 90, Stored: 90}, 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.p.NeedsRewind(tc.pos); got != tc.want {
				t.Errorf("NeedsRewind(%d) = %v, want %v", tc.pos, got, tc.want)
			}
		})
	}
}

// TestReplayRulesOnAModelHistory checks the routing rules (Positions,
// NeedsRewind, Delta, RoomState, PDUDestinations) on a model history kept here:
// a loop written in this test, shaped like the router's, routes a room's
// records once and again from the kick, the ban and the start, and each
// replay must route every event as the first pass did. It checks the rules,
// not the router: the real router's replay is covered by consumers/router's
// TestHandlerReplayAfterDeltasStored and TestHandlerReplayOfBanAndInvite and
// by cmd/fedpipe's TestBanAndInviteRouteAlikeAfterACrashAndReplay.
func TestReplayRulesOnAModelHistory(t *testing.T) {
	type rec struct {
		pos        int64
		origin     string // an event from origin when set, else a delta
		user, memb string
	}
	ev := func(pos int64, origin string) rec { return rec{pos: pos, origin: origin} }
	delta := func(pos int64, user, memb string) rec { return rec{pos: pos, user: user, memb: memb} }
	recs := []rec{
		ev(1, our), delta(1, "@a:hs.test", "join"),
		ev(2, "one.test"), delta(2, "@b:one.test", "join"),
		ev(3, our),
		ev(4, "two.test"), delta(4, "@c:two.test", "join"),
		ev(5, our),
		ev(6, our), delta(6, "@b:one.test", "leave"), // a kick of one.test's last user
		ev(7, our),
		ev(8, our), delta(8, "@z:new.test", "invite"), // an invite of a server not in the room
		ev(9, our), delta(9, "@c:two.test", "ban"), // a ban of two.test's last user
		ev(10, our), delta(10, "@c:two.test", "ban"), // banned again, nothing changes
		ev(11, our),
	}
	type histEntry struct {
		pos    int64
		user   string
		joined bool
	}
	// history is keyed like the stored one: (user, position), upserted.
	var history []histEntry
	store := func(h histEntry) {
		for i := range history {
			if history[i].pos == h.pos && history[i].user == h.user {
				history[i] = h
				return
			}
		}
		history = append(history, h)
	}
	stateBefore := func(pos int64) *RoomState {
		s := NewRoomState()
		for _, h := range history {
			if h.pos < pos {
				m := ""
				if h.joined {
					m = MembershipJoin
				}
				s.Apply(h.user, m)
			}
		}
		return s
	}
	var p Positions
	state := NewRoomState()
	run := func(from int) [][]string {
		var out [][]string
		for _, r := range recs[from:] {
			if r.origin != "" {
				if p.NeedsRewind(r.pos) {
					state, p.Applied = stateBefore(r.pos), r.pos-1
				}
				out = append(out, PDUDestinations(state, our, r.origin))
				continue
			}
			switch p.Delta(r.pos) {
			case DeltaSkip:
				continue
			case DeltaApplyAndStore:
				if state.Apply(r.user, r.memb) {
					store(histEntry{r.pos, r.user, r.memb == MembershipJoin})
				}
				p.Stored = max(p.Stored, r.pos)
			case DeltaApply:
				state.Apply(r.user, r.memb)
			}
			p.Applied = max(p.Applied, r.pos)
		}
		return out
	}
	first := run(0)
	want := [][]string{{}, nil, {"one.test"}, nil, {"one.test", "two.test"}, {"one.test", "two.test"}, {"two.test"}, {"two.test"}, {"two.test"}, {}, {}}
	if !equalRoutes(first, want) {
		t.Fatalf("first pass routes %q, want %q", first, want)
	}
	storedBefore := len(history)
	// A crash after storing the kick's delta: replay from the kick.
	if again := run(8); !equalRoutes(again, want[5:]) {
		t.Errorf("replay from the kick routes %q, want %q", again, want[5:])
	}
	// A crash after storing the ban's delta: replay from the ban.
	if again := run(13); !equalRoutes(again, want[8:]) {
		t.Errorf("replay from the ban routes %q, want %q", again, want[8:])
	}
	if again := run(0); !equalRoutes(again, want) {
		t.Errorf("replay from the start routes %q, want %q", again, want)
	}
	if len(history) != storedBefore {
		t.Errorf("replays stored %d more changes", len(history)-storedBefore)
	}
	if got := state.JoinedServers(); !slices.Equal(got, []string{"hs.test"}) {
		t.Errorf("after replays joined servers = %q", got)
	}
}

func equalRoutes(a, b [][]string) bool {
	return slices.EqualFunc(a, b, func(x, y []string) bool { return len(x) == 0 && len(y) == 0 || slices.Equal(x, y) })
}
