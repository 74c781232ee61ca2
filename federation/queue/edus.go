package queue

import (
	"encoding/json"

	"github.com/fedpipe/fedpipe/federation/edu"
)

// maxPresenceUsers is how many users' presence one m.presence EDU carries, as
// Synapse batches them.
const maxPresenceUsers = 50

// takeEDUs takes the EDUs of the next transaction from queued (at most max),
// and returns them with what stays queued. Ephemeral state is coalesced, so a
// destination that was slow gets the latest state and not its history:
//   - m.typing: only the latest EDU per (room, user) is sent;
//   - m.presence: consecutive EDUs are merged into one EDU holding the latest
//     update per user (up to 50 users); one presence EDU per transaction.
//
// A superseded item is done when the item that replaced it is: its Done is
// chained to the survivor's.
func takeEDUs(queued []Item, max int) (take, rest []Item) {
	type typingKey struct{ room, user string }
	typing := map[typingKey]int{} // index in take
	presence := -1                // index in take of this transaction's presence EDU
	var users []string            // its users, in first-seen order
	var updates map[string]json.RawMessage
	presenceFull := false
	for i, it := range queued {
		if len(take) >= max {
			rest = append(rest, queued[i:]...)
			break
		}
		switch it.EDU.Type {
		case edu.TypeTyping:
			var c struct {
				RoomID string `json:"room_id"`
				UserID string `json:"user_id"`
			}
			if json.Unmarshal(it.EDU.Content, &c) != nil || c.RoomID == "" || c.UserID == "" {
				break // not ours to judge: sent as it is
			}
			k := typingKey{c.RoomID, c.UserID}
			if j, ok := typing[k]; ok {
				take[j].EDU = it.EDU
				take[j].Done = chain(take[j].Done, it.Done)
				continue
			}
			typing[k] = len(take)
		case edu.TypePresence:
			ids, ups, ok := presenceUpdates(it.EDU.Content)
			if !ok {
				break
			}
			if presenceFull {
				rest = append(rest, it) // keeps presence in order for the next transaction
				continue
			}
			if presence < 0 {
				presence, users, updates = len(take), ids, ups
				if len(users) >= maxPresenceUsers {
					presenceFull = true
				}
				break
			}
			var added []string
			for _, u := range ids {
				if _, seen := updates[u]; !seen {
					added = append(added, u)
				}
			}
			if len(users)+len(added) > maxPresenceUsers {
				presenceFull = true
				rest = append(rest, it)
				continue
			}
			users = append(users, added...)
			for u, raw := range ups {
				updates[u] = raw
			}
			take[presence].EDU.Content = presenceContent(users, updates)
			take[presence].Done = chain(take[presence].Done, it.Done)
			continue
		}
		take = append(take, it)
	}
	return take, rest
}

// presenceUpdates parses an m.presence content into its users (in order) and
// each user's last update, keeping every update's bytes.
func presenceUpdates(content json.RawMessage) (users []string, updates map[string]json.RawMessage, ok bool) {
	var c struct {
		Push []json.RawMessage `json:"push"`
	}
	if json.Unmarshal(content, &c) != nil {
		return nil, nil, false
	}
	updates = map[string]json.RawMessage{}
	for _, raw := range c.Push {
		var u struct {
			UserID string `json:"user_id"`
		}
		if json.Unmarshal(raw, &u) != nil || u.UserID == "" {
			return nil, nil, false
		}
		if _, seen := updates[u.UserID]; !seen {
			users = append(users, u.UserID)
		}
		updates[u.UserID] = raw
	}
	return users, updates, true
}

func presenceContent(users []string, updates map[string]json.RawMessage) json.RawMessage {
	b := append(make([]byte, 0, 64*len(users)), `{"push":[`...)
	for i, u := range users {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, updates[u]...)
	}
	return append(b, "]}"...)
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
