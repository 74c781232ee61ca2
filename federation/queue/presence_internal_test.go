package queue

import (
	"fmt"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/edu"
)

func TestPendingPresenceDoneAccounting(t *testing.T) {
	var q destQueue
	done := map[string]int{}
	item := func(name string, users ...string) ([]edu.PresenceState, *presenceItem) {
		p := &presenceItem{done: func() { done[name]++ }}
		p.left.Store(int64(len(users)))
		var states []edu.PresenceState
		for _, u := range users {
			states = append(states, edu.PresenceState{UserID: u, Presence: edu.Online, StatusMsg: name})
		}
		return states, p
	}
	add := func(name string, users ...string) *presenceItem {
		states, p := item(name, users...)
		releaseAll(q.addPresence(states, p))
		return p
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
	add("E", "@e", "@d") // an item that fails to be enqueued is forgotten
	q.forgetPresence(q.presence["@e"].item)
	if _, ok := q.presence["@e"]; ok || len(q.presenceUsers) != 3 {
		t.Fatalf("forgetting E left %v", q.presenceUsers)
	}
	it, ok := q.takePresence(2)
	if !ok || fmt.Sprint(states(it)) != "[@a=C @b=B]" {
		t.Fatalf("took %v, want the first two users queued, each with its latest state", states(it))
	}
	it.Done()
	if done["B"] != 1 || done["C"] != 0 {
		t.Fatalf("done %v after the first batch, want B only (C has @c pending)", done)
	}
	it, _ = q.takePresence(50)
	if fmt.Sprint(states(it)) != "[@c=C]" {
		t.Fatalf("took %v", states(it))
	}
	it.Done()
	if done["C"] != 1 || done["D"] != 1 || done["E"] != 0 {
		t.Fatalf("done %v, want C once, D once (superseded by E, which was never taken)", done)
	}
	if _, ok := q.takePresence(50); ok || q.presenceUsers != nil {
		t.Fatal("presence left after everything was taken")
	}
}

func states(it Item) []string {
	var out []string
	for _, s := range it.Presence {
		out = append(out, s.UserID+"="+s.StatusMsg)
	}
	return out
}

func TestRenderAgesPresence(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	it := Item{Presence: []edu.PresenceState{
		{UserID: "@a:x", Presence: edu.Online, LastActiveTS: now.UnixMilli() - 1500, CurrentlyActive: true},
		{UserID: "@b:x", Presence: edu.Offline, LastActiveTS: now.UnixMilli() + 99, CurrentlyActive: true, StatusMsg: "away"},
	}}
	e, err := render(it, now)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"push":[{"user_id":"@a:x","presence":"online","last_active_ago":1500,"currently_active":true},{"user_id":"@b:x","presence":"offline","last_active_ago":0,"status_msg":"away"}]}`
	if e.Type != edu.TypePresence || string(e.Content) != want {
		t.Fatalf("%s %s, want %s", e.Type, e.Content, want)
	}
}
