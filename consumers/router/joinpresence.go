package router

import (
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/federation/presence"
	"github.com/fedpipe/fedpipe/federation/routing"
	"github.com/fedpipe/fedpipe/schema"
)

// joinPresence is what one join tells remote servers about local users'
// presence, decided when the join is routed and looked up with the batch's
// membership changes (store.saveAndLookUp):
//   - a remote server joining a room it was not in gets the current presence of
//     the local users in the room, without stale offline states and without
//     users it already shares another room with (it has their presence);
//   - when a local user joins, every remote server in the room gets the user's
//     presence.
//
// Servers that were in the room and gained no one get nothing.
type joinPresence struct {
	rec schema.RoomRecord
	// server is the joining user's server.
	server string
	// dests, for a local user's join: the remote servers in the room.
	dests []string
	// locals, for a new server: the local users joined when it joined. The
	// look-up runs after the batch's changes are stored, so it may see later
	// ones: a local user who joined later tells the server at their own join,
	// and one who left is no longer in a room with it.
	locals map[string]bool
	// states is what the look-up found.
	states []schema.PresenceState
}

// joinPresence decides what the join rec tells, as presence.OnJoin decides
// (nil: nothing). state is the room after the join.
func (p *partitionHandler) joinPresence(rec schema.RoomRecord, state *routing.RoomState, serverWasJoined bool) *joinPresence {
	user := *rec.StateKey
	server, _ := mxid.ServerOf(user)
	ours := p.r.cfg.ServerName
	switch presence.OnJoin(server, ours, serverWasJoined) {
	case presence.AnnounceUser:
		dests := presence.RemoteServers(state.JoinedServers(), ours)
		if len(dests) == 0 {
			return nil
		}
		return &joinPresence{rec: rec, server: server, dests: dests}
	case presence.AnnounceRoom:
		locals := map[string]bool{}
		for _, u := range state.JoinedUsers() {
			if s, _ := mxid.ServerOf(u); s == ours {
				locals[u] = true
			}
		}
		if len(locals) == 0 {
			return nil
		}
		return &joinPresence{rec: rec, server: server, locals: locals}
	}
	return nil
}

// local says whether the join is a local user's.
func (j *joinPresence) local() bool { return j.locals == nil }

// presenceRecords builds the outbound presence records of a batch's joins
// from what their look-ups found.
func (p *partitionHandler) presenceRecords(joins []*joinPresence) ([]kafka.Message, error) {
	var msgs []kafka.Message
	now := time.Now()
	for _, j := range joins {
		if j.local() {
			if len(j.states) == 0 {
				continue // no presence published yet
			}
			m, err := presenceRecords(j.dests, j.states[:1], j.rec.Position, p.r.cfg.Instance)
			if err != nil {
				return nil, err
			}
			p.r.m.presence.WithLabelValues("local_join").Add(float64(len(m)))
			msgs = append(msgs, m...)
			continue
		}
		states := presence.ForNewServer(j.states, func(u string) bool { return j.locals[u] }, now)
		if len(states) == 0 {
			continue
		}
		m, err := splitPresenceRecords(j.server, states, j.rec.Position, p.r.cfg.Instance)
		if err != nil {
			return nil, fmt.Errorf("presence for %s joining %s: %w", j.server, j.rec.RoomID, err)
		}
		p.r.m.presence.WithLabelValues("server_join").Add(float64(len(m)))
		msgs = append(msgs, m...)
	}
	return msgs, nil
}
