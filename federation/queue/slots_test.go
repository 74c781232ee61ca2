package queue

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/presence"
	"github.com/fedpipe/fedpipe/federation/txn"
)

func typing(room, user string, on bool) EDU {
	return EDU{EDU: txn.EDU{Type: "m.typing", Content: json.RawMessage(fmt.Sprintf(`{"room_id":%q,"typing":%t,"user_id":%q}`, room, on, user))}, Key: room + " " + user}
}

func TestEDUQueue(t *testing.T) {
	other := EDU{EDU: txn.EDU{Type: "m.receipt", Content: json.RawMessage(`{"!r":{}}`)}}
	for _, tc := range []struct {
		name      string
		queued    []EDU
		max       int
		take      []string // type: content
		rest      int
		doneAfter int // items done once every taken one is
	}{
		{"a keyed EDU keeps only the latest per key, in the place of the first",
			[]EDU{typing("!a", "@u", true), typing("!b", "@u", true), typing("!a", "@u", false), typing("!a", "@v", true)}, 100, []string{
				`m.typing: {"room_id":"!a","typing":false,"user_id":"@u"}`,
				`m.typing: {"room_id":"!b","typing":true,"user_id":"@u"}`,
				`m.typing: {"room_id":"!a","typing":true,"user_id":"@v"}`,
			}, 0, 4},
		{"at most max EDUs", []EDU{other, other, other, typing("!a", "@u", true)}, 2, []string{`m.receipt: {"!r":{}}`, `m.receipt: {"!r":{}}`}, 2, 2},
		{"EDUs without a key are all sent, whatever their content",
			[]EDU{{EDU: txn.EDU{Type: "m.typing", Content: json.RawMessage(`{"n":1}`)}}, {EDU: txn.EDU{Type: "m.typing", Content: json.RawMessage(`{"n":1}`)}}},
			100, []string{`m.typing: {"n":1}`, `m.typing: {"n":1}`}, 0, 2},
		{"the same key of another type is another EDU",
			[]EDU{{EDU: txn.EDU{Type: "m.a", Content: json.RawMessage(`{}`)}, Key: "k"}, {EDU: txn.EDU{Type: "m.b", Content: json.RawMessage(`{}`)}, Key: "k"}},
			100, []string{`m.a: {}`, `m.b: {}`}, 0, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var q eduQueue
			done := 0
			for _, e := range tc.queued {
				q.add(e, func() { done++ })
			}
			take := q.take(tc.max)
			var got []string
			for _, it := range take {
				e, _ := it.build(time.Now())
				got = append(got, e.Type+": "+string(e.Content))
			}
			if strings.Join(got, "\n") != strings.Join(tc.take, "\n") {
				t.Fatalf("took\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.take, "\n"))
			}
			if q.len() != tc.rest {
				t.Fatalf("%d left queued, want %d", q.len(), tc.rest)
			}
			if done != 0 {
				t.Fatal("an item was done before anything was sent")
			}
			for _, it := range take {
				it.done()
			}
			if done != tc.doneAfter {
				t.Fatalf("%d items done after sending, want %d", done, tc.doneAfter)
			}
			q.add(typing("!z", "@z", true), func() {})
			if n := len(q.drain()); n != tc.rest+1 || q.len() != 0 {
				t.Fatalf("drain took %d, left %d; want %d, 0", n, q.len(), tc.rest+1)
			}
		})
	}
}

func TestPresenceSlotDoneAccounting(t *testing.T) {
	var s presenceSlot
	done := map[string]int{}
	add := func(name string, users ...string) {
		var states []presence.State
		for _, u := range users {
			states = append(states, presence.State{UserID: u, Presence: edu.Online, StatusMsg: new(name)})
		}
		releaseAll(s.add(states, newMergedItem(len(users), func() { done[name]++ })))
	}
	add("A", "@a", "@b")
	add("B", "@b") // supersedes A's @b: A still has @a pending
	if done["A"] != 0 {
		t.Fatal("A done while its @a is pending")
	}
	add("C", "@a", "@c") // supersedes A's @a: A is done, nothing of it is left
	if done["A"] != 1 {
		t.Fatalf("A done %d times, want 1", done["A"])
	}
	add("D", "@d")
	add("E", "@e", "@d")
	took := s.take(2)
	if len(took) != 1 || took[0].count != 5 {
		t.Fatalf("took %d EDUs, want one m.presence EDU of the 5 users queued", len(took))
	}
	if got := fmt.Sprint(rendered(t, took[0])); got != "[@a=C @b=B @c=C @d=E @e=E]" {
		t.Fatalf("took %s, want the users in the order first queued, each with its latest state", got)
	}
	if done["D"] != 1 {
		t.Fatalf("D done %d times, want once (superseded by E)", done["D"])
	}
	took[0].done()
	if fmt.Sprint(done) != "map[A:1 B:1 C:1 D:1 E:1]" {
		t.Fatalf("done %v after delivery, want every item once", done)
	}
	if s.take(50) != nil || s.len() != 0 || s.users != nil {
		t.Fatal("presence left after everything was taken")
	}
	add("F", "@f", "@g")
	if got := s.take(0); got != nil {
		t.Fatalf("took %d EDUs with no room left", len(got))
	}
	drained := s.drain()
	if len(drained) != 1 || drained[0].count != 2 || s.len() != 0 {
		t.Fatalf("drain returned %v, left %d; want one item counting the two states", drained, s.len())
	}
	drained[0].done()
	if done["F"] != 1 {
		t.Fatal("a drained item is done once its states are")
	}
}

func TestPresenceSlotTakesAtMost50Users(t *testing.T) {
	var s presenceSlot
	for i := 0; i < 120; i++ {
		s.add([]presence.State{{UserID: fmt.Sprintf("@u%d", i), Presence: edu.Online}}, newMergedItem(1, nil))
	}
	var sizes []int
	for s.len() > 0 {
		sizes = append(sizes, len(rendered(t, s.take(100)[0])))
	}
	if fmt.Sprint(sizes) != "[50 50 20]" {
		t.Fatalf("m.presence EDUs of %v users, want [50 50 20]", sizes)
	}
}

// rendered is user=status_msg per update of a presence item's EDU.
func rendered(t *testing.T, it eduItem) []string {
	t.Helper()
	e, err := it.build(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Push []struct {
			UserID    string `json:"user_id"`
			StatusMsg string `json:"status_msg"`
		} `json:"push"`
	}
	if err := json.Unmarshal(e.Content, &c); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, u := range c.Push {
		out = append(out, u.UserID+"="+u.StatusMsg)
	}
	return out
}

func TestRenderAgesPresence(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	e, err := renderPresence([]presence.State{
		{UserID: "@a:x", Presence: edu.Online, LastActiveTS: now.UnixMilli() - 1500, CurrentlyActive: true},
		{UserID: "@b:x", Presence: edu.Offline, LastActiveTS: now.UnixMilli() + 99, CurrentlyActive: true, StatusMsg: new("away")},
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"push":[{"user_id":"@a:x","presence":"online","last_active_ago":1500,"currently_active":true},{"user_id":"@b:x","presence":"offline","last_active_ago":0,"status_msg":"away"}]}`
	if e.Type != edu.TypePresence || string(e.Content) != want {
		t.Fatalf("%s %s, want %s", e.Type, e.Content, want)
	}
}
