package routing

import "slices"

// JoinedServers is the room state PDUDestinations reads: the servers joined to
// the room, sorted.
type JoinedServers interface {
	JoinedServers() []string
}

// Event is what routing needs to know about an event.
type Event struct {
	// Origin is the server name of the sender.
	Origin string
	Type   string
	// StateKey is nil for a non-state event.
	StateKey *string
}

// PDUDestinations returns the servers an event is sent to, sorted: the servers
// joined to the room in the state before the event, plus, for an m.room.member
// event, the target user's server (so a kicked, banned or leaving server gets
// its leave, and an invited server its invite), never ourServer.
//
// Only events that originate on ourServer are sent: an event received over
// federation was already sent by its origin to every server in the room, so it
// gets no destinations (its state deltas still update the membership).
func PDUDestinations(before JoinedServers, ourServer string, ev Event) []string {
	if ev.Origin != ourServer {
		return nil
	}
	joined := before.JoinedServers()
	dests := make([]string, 0, len(joined)+1)
	for _, s := range joined {
		if s != ourServer {
			dests = append(dests, s)
		}
	}
	if ev.Type == TypeMember && ev.StateKey != nil {
		if target, ok := ServerName(*ev.StateKey); ok && target != ourServer {
			if i, found := slices.BinarySearch(dests, target); !found {
				dests = slices.Insert(dests, i, target)
			}
		}
	}
	return dests
}
