package routing

// JoinedServers is the room state PDUDestinations reads: the servers joined to
// the room, sorted.
type JoinedServers interface {
	JoinedServers() []string
}

// PDUDestinations returns the servers an event from origin is sent to, sorted:
// the servers joined to the room in the state before the event, never
// ourServer. That is Synapse's rule (its federation sender sends to the hosts
// joined at the event's prev_events), the same for every event type and
// membership:
//   - the last joined user of a server who is kicked, banned or leaves still
//     reaches that server, which was joined before the event;
//   - an invite, a knock or a pre-emptive ban of a user whose server has no
//     joined member reaches no extra server (the homeserver delivers an invite
//     to the invitee's server through /invite, outside the sender);
//   - a server whose first user joins is not sent that join: it was not in the
//     room before it (a local user's join reaches the servers already joined).
//
// Only events that originate on ourServer are sent: an event received over
// federation was already sent by its origin to every server in the room, so it
// gets no destinations (its state deltas still update the membership). Unlike
// Synapse, fedpipe does not pass on a remote server's join, leave or knock that
// reached us through /send_join, /send_leave or /send_knock: its origin is
// remote, and the room record does not say how it arrived.
func PDUDestinations(before JoinedServers, ourServer, origin string) []string {
	if origin != ourServer {
		return nil
	}
	joined := before.JoinedServers()
	dests := make([]string, 0, len(joined))
	for _, s := range joined {
		if s != ourServer {
			dests = append(dests, s)
		}
	}
	return dests
}
