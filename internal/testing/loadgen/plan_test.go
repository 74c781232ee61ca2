package loadgen

import (
	"encoding/json"
	"reflect"
	"slices"
	"testing"

	"github.com/fedpipe/fedpipe/federation/mxid"
)

func testPlan(t *testing.T) *Plan {
	t.Helper()
	p, err := Generate(Config{LocalServer: "local.test", RemoteServers: []string{"a.test", "b.test", "c.test", "d.test"}, Rooms: 5, Events: 400, ServersPerRoom: 2, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestGenerateIsDeterministicAndNeverTargetsOurselves(t *testing.T) {
	p1, p2 := testPlan(t), testPlan(t)
	if p1.Expected == 0 || p1.Expected != p2.Expected || !reflect.DeepEqual(p1.Events, p2.Events) {
		t.Fatalf("plans of one seed differ or are empty: %d/%d events, %d/%d deliveries", len(p1.Events), len(p2.Events), p1.Expected, p2.Expected)
	}
	kicks, remote := 0, 0
	for _, ev := range p1.Events {
		for _, d := range ev.Destinations {
			if d == "local.test" {
				t.Fatalf("event %d destined to ourselves", ev.Seq)
			}
		}
		if ev.Origin != "local.test" {
			remote++
			if len(ev.Destinations) > 0 {
				t.Fatalf("remote event %d has destinations", ev.Seq)
			}
		}
		if ev.Type == "m.room.member" && ev.Origin == "local.test" && ev.Deltas[0].Membership == "leave" {
			kicks++
			if !contains(ev.Destinations, mxid.ServerPart(*ev.StateKey)) {
				t.Fatalf("kick %d does not reach the kicked server", ev.Seq)
			}
		}
	}
	if kicks == 0 || remote == 0 {
		t.Fatalf("workload lacks kicks (%d) or remote events (%d)", kicks, remote)
	}
}

// TestMemberEventsGoToTheServersJoinedBefore: the plan expects every local
// event at the servers joined before it, membership events included, and its
// workload holds each case the rule decides: invites and pre-emptive bans of a
// user whose server has no one joined (no extra server) and kicks and bans of
// a server's last joined user (that server).
func TestMemberEventsGoToTheServersJoinedBefore(t *testing.T) {
	p, err := Generate(Config{LocalServer: "local.test", RemoteServers: []string{"a.test", "b.test", "c.test", "d.test", "e.test"}, Rooms: 5, Events: 2000, ServersPerRoom: 2, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	members := map[string]map[string]string{} // room → user → membership
	joinedServers := func(room string) map[string]int {
		n := map[string]int{}
		for u, m := range members[room] {
			if m == "join" {
				n[mxid.ServerPart(u)]++
			}
		}
		return n
	}
	cases := map[string]int{}
	for _, ev := range p.Events {
		before := joinedServers(ev.RoomID)
		if ev.Origin == "local.test" {
			var want []string
			for s := range before {
				if s != "local.test" {
					want = append(want, s)
				}
			}
			slices.Sort(want)
			if !slices.Equal(ev.Destinations, want) {
				t.Fatalf("event %d (%s) destined to %q, the servers joined before it are %q", ev.Seq, ev.Type, ev.Destinations, want)
			}
			if ev.Type == "m.room.member" && mxid.ServerPart(*ev.StateKey) != "local.test" {
				target := mxid.ServerPart(*ev.StateKey)
				switch m := ev.Deltas[0].Membership; {
				case (m == "invite" || m == "ban") && before[target] == 0:
					cases[m+" of a server with no one joined"]++
				case (m == "leave" || m == "ban") && before[target] == 1 && members[ev.RoomID][*ev.StateKey] == "join":
					cases[m+" of a server's last joined user"]++
				}
			}
		}
		for _, d := range ev.Deltas {
			if d.Type == "m.room.member" {
				if members[ev.RoomID] == nil {
					members[ev.RoomID] = map[string]string{}
				}
				members[ev.RoomID][d.StateKey] = d.Membership
			}
		}
	}
	for _, c := range []string{"invite of a server with no one joined", "ban of a server with no one joined", "leave of a server's last joined user", "ban of a server's last joined user"} {
		if cases[c] == 0 {
			t.Errorf("the workload has no %s (%v)", c, cases)
		}
	}
	t.Logf("cases: %v", cases)
}

func TestCheckFindsEveryKindOfFault(t *testing.T) {
	p := testPlan(t)
	perfect := map[string][]json.RawMessage{}
	for _, ev := range p.Events {
		for _, d := range ev.Destinations {
			perfect[d] = append(perfect[d], ev.PDU)
		}
	}
	if rep := p.Check(func(s string) []json.RawMessage { return perfect[s] }, -1); !rep.OK() || rep.Totals().Delivered != p.Expected {
		t.Fatalf("perfect delivery judged wrong: %+v", rep.Totals())
	}
	var a string
	for s, pdus := range perfect {
		if len(pdus) > 3 {
			a = s
			break
		}
	}
	for _, tc := range []struct {
		name  string
		alter func([]json.RawMessage) []json.RawMessage
		bad   func(ServerReport) bool
	}{
		{"missing", func(x []json.RawMessage) []json.RawMessage { return x[1:] }, func(r ServerReport) bool { return r.Missing == 1 }},
		{"reordered", func(x []json.RawMessage) []json.RawMessage {
			y := append([]json.RawMessage(nil), x...)
			for i := 1; i < len(y); i++ {
				if s1, _ := p.SeqOf(y[i-1]); p.Events[s1].RoomID == p.Events[mustSeq(p, y[i])].RoomID {
					y[i-1], y[i] = y[i], y[i-1]
					break
				}
			}
			return y
		}, func(r ServerReport) bool { return r.OutOfOrder == 1 }},
		{"re-encoded", func(x []json.RawMessage) []json.RawMessage {
			y := append([]json.RawMessage(nil), x...)
			y[0] = append(json.RawMessage(" "), y[0]...)
			return y
		}, func(r ServerReport) bool { return r.Unknown == 1 && r.Missing == 1 }},
		{"duplicated", func(x []json.RawMessage) []json.RawMessage { return append(x, x[0]) }, func(r ServerReport) bool { return r.Duplicates == 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := p.Check(func(s string) []json.RawMessage {
				if s == a {
					return tc.alter(perfect[s])
				}
				return perfect[s]
			}, -1)
			for _, sr := range rep.Servers {
				if sr.Server == a && !tc.bad(sr) {
					t.Fatalf("fault not seen: %+v", sr)
				}
			}
		})
	}
}

func mustSeq(p *Plan, pdu json.RawMessage) int { s, _ := p.SeqOf(pdu); return s }

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}
