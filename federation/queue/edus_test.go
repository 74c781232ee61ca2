package queue

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/federation/txn"
)

func typingItem(room, user string, on bool, done *int) Item {
	return Item{EDU: txn.EDU{Type: "m.typing", Content: json.RawMessage(fmt.Sprintf(`{"room_id":%q,"typing":%t,"user_id":%q}`, room, on, user))}, Done: func() { *done++ }}
}

func presenceItem(done *int, states ...string) Item {
	var push []string
	for _, s := range states {
		user, presence, _ := strings.Cut(s, "=")
		push = append(push, fmt.Sprintf(`{"last_active_ago":1,"presence":%q,"user_id":%q}`, presence, user))
	}
	return Item{EDU: txn.EDU{Type: "m.presence", Content: json.RawMessage(`{"push":[` + strings.Join(push, ",") + `]}`)}, Done: func() { *done++ }}
}

func manyUsers(from, n int, presence string) []string {
	var out []string
	for i := from; i < from+n; i++ {
		out = append(out, fmt.Sprintf("@u%d:hs=%s", i, presence))
	}
	return out
}

func TestTakeEDUs(t *testing.T) {
	other := Item{EDU: txn.EDU{Type: "m.receipt", Content: json.RawMessage(`{"!r":{}}`)}}
	for _, tc := range []struct {
		name      string
		queued    func(done *int) []Item
		max       int
		take      []string // type: content
		rest      int
		doneAfter int // items done once every taken one is
	}{
		{"typing keeps only the latest per room and user", func(d *int) []Item {
			return []Item{typingItem("!a", "@u", true, d), typingItem("!b", "@u", true, d), typingItem("!a", "@u", false, d), typingItem("!a", "@v", true, d)}
		}, 100, []string{
			`m.typing: {"room_id":"!a","typing":false,"user_id":"@u"}`,
			`m.typing: {"room_id":"!b","typing":true,"user_id":"@u"}`,
			`m.typing: {"room_id":"!a","typing":true,"user_id":"@v"}`,
		}, 0, 4},
		{"presence merged into one EDU with the latest per user, bytes kept", func(d *int) []Item {
			return []Item{presenceItem(d, "@a=online", "@b=online"), other, presenceItem(d, "@a=offline"), presenceItem(d, "@c=unavailable")}
		}, 100, []string{
			`m.presence: {"push":[{"last_active_ago":1,"presence":"offline","user_id":"@a"},{"last_active_ago":1,"presence":"online","user_id":"@b"},{"last_active_ago":1,"presence":"unavailable","user_id":"@c"}]}`,
			`m.receipt: {"!r":{}}`,
		}, 0, 3},
		{"presence beyond 50 users waits for the next transaction, in order", func(d *int) []Item {
			return []Item{presenceItem(d, manyUsers(0, 30, "online")...), presenceItem(d, manyUsers(30, 30, "online")...), other, presenceItem(d, "@u0:hs=offline")}
		}, 100, []string{"m.presence: 30 users", `m.receipt: {"!r":{}}`}, 2, 1},
		{"at most max EDUs", func(d *int) []Item {
			return []Item{other, other, other, typingItem("!a", "@u", true, d)}
		}, 2, []string{`m.receipt: {"!r":{}}`, `m.receipt: {"!r":{}}`}, 2, 0},
		{"unparseable typing content is sent as it is", func(d *int) []Item {
			return []Item{{EDU: txn.EDU{Type: "m.typing", Content: json.RawMessage(`{"n":1}`)}}, {EDU: txn.EDU{Type: "m.typing", Content: json.RawMessage(`{"n":1}`)}}}
		}, 100, []string{`m.typing: {"n":1}`, `m.typing: {"n":1}`}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var done int
			take, rest := takeEDUs(tc.queued(&done), tc.max)
			var got []string
			for _, it := range take {
				s := it.EDU.Type + ": " + string(it.EDU.Content)
				if it.EDU.Type == "m.presence" && strings.Count(s, "user_id") > 3 {
					s = fmt.Sprintf("m.presence: %d users", strings.Count(s, "user_id"))
				}
				got = append(got, s)
				if !json.Valid(it.EDU.Content) {
					t.Fatalf("invalid content %s", it.EDU.Content)
				}
			}
			if strings.Join(got, "\n") != strings.Join(tc.take, "\n") {
				t.Fatalf("took\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.take, "\n"))
			}
			if len(rest) != tc.rest {
				t.Fatalf("%d left queued, want %d", len(rest), tc.rest)
			}
			if done != 0 {
				t.Fatal("an item was done before anything was sent")
			}
			for _, it := range take {
				if it.Done != nil {
					it.Done()
				}
			}
			if done != tc.doneAfter {
				t.Fatalf("%d items done after sending, want %d", done, tc.doneAfter)
			}
		})
	}
}
