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
				got = append(got, it.EDU.Type+": "+string(it.EDU.Content))
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
