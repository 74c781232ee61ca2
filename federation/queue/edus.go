package queue

import (
	"encoding/json"

	"github.com/fedpipe/fedpipe/federation/edu"
)

// takeEDUs takes the EDUs of the next transaction from queued (at most max),
// and returns them with what stays queued. Typing is coalesced, so a
// destination that was slow gets the latest state and not its history: only
// the latest m.typing EDU per (room, user) is sent. (Presence is coalesced
// per user as it is enqueued: see presence.go.)
//
// A superseded item is done when the item that replaced it is: its Done is
// chained to the survivor's.
func takeEDUs(queued []Item, max int) (take, rest []Item) {
	type typingKey struct{ room, user string }
	typing := map[typingKey]int{} // index in take
	for i, it := range queued {
		if len(take) >= max {
			rest = append(rest, queued[i:]...)
			break
		}
		if it.EDU.Type == edu.TypeTyping {
			var c struct {
				RoomID string `json:"room_id"`
				UserID string `json:"user_id"`
			}
			if json.Unmarshal(it.EDU.Content, &c) == nil && c.RoomID != "" && c.UserID != "" {
				k := typingKey{c.RoomID, c.UserID}
				if j, ok := typing[k]; ok {
					take[j].EDU = it.EDU
					take[j].Done = chain(take[j].Done, it.Done)
					continue
				}
				typing[k] = len(take)
			} // else not ours to judge: sent as it is
		}
		take = append(take, it)
	}
	return take, rest
}

func chain(first, then func()) func() {
	return func() {
		if first != nil {
			first()
		}
		if then != nil {
			then()
		}
	}
}
