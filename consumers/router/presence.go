package router

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/federation/routing"
	"github.com/fedpipe/fedpipe/schema"
)

// staleOffline: an offline state whose last activity is older than this, and
// which has no status message, is not sent to a server that newly joins a
// room (it tells it nothing it would not assume).
const staleOffline = 7 * 24 * time.Hour

// maxStatesPerRecord and maxPresenceRecordBytes bound one outbound presence
// record: a record holds at most this many states and, unless one state alone
// is larger, this many bytes of encoded states, half the topic's 1 MiB message
// limit. Splitting by count alone let a few large status messages make a
// record the writer could never write.
const (
	maxStatesPerRecord     = 200
	maxPresenceRecordBytes = 512 << 10
)

// splitStates cuts states into the runs of one outbound record each (see
// maxPresenceRecordBytes), in order. A state larger than the bound is a run
// of its own: the writer dead-letters it if the topic cannot take it.
func splitStates(states []schema.PresenceState) [][]schema.PresenceState {
	var runs [][]schema.PresenceState
	start, size := 0, 0
	for i, st := range states {
		n := stateBytes(st)
		if i > start && (i-start == maxStatesPerRecord || size+n > maxPresenceRecordBytes) {
			runs = append(runs, states[start:i])
			start, size = i, 0
		}
		size += n
	}
	if start < len(states) {
		runs = append(runs, states[start:])
	}
	return runs
}

// stateBytes is an upper bound of a state's size in a record (json.Marshal
// escapes more than the records' encoder does).
func stateBytes(st schema.PresenceState) int {
	b, err := json.Marshal(st)
	if err != nil {
		return maxPresenceRecordBytes
	}
	return len(b) + 1
}

// presenceHandler routes one partition of <prefix>.presence: each local
// user's presence goes to every remote server sharing a room with the user.
// The rooms and their members are read from PostgreSQL, which every router
// member writes, so the answer does not depend on who owns the user's rooms.
//
// Records that arrive together are routed together (runtime.Batch, up to
// maxPresenceBatch): each destination gets one record holding the latest state
// of every kept user it shares a room with. A storm of presence changes
// then costs one destination query and one outbound record per destination
// per batch, not per change.
type presenceHandler struct {
	r         *Router
	topic     string
	partition int
	batch     runtime.Batch[*schema.PresenceState] // nil: not ours to route
	pos       int64                                // the highest position kept
}

// maxPresenceBatch bounds the presence records routed together.
const maxPresenceBatch = 1000

// Close abandons kept records: not done, they are routed by the next owner.
func (p *presenceHandler) Close(ctx context.Context) error {
	p.batch.Close()
	return p.r.out.Settle(ctx) // see partitionHandler.Close
}

func (p *presenceHandler) Handle(ctx context.Context, m kafka.Message, done func()) error {
	rec, err := schema.DecodePresenceRecord(m.Value)
	if err != nil {
		if ferr := p.batch.FlushKept(ctx); ferr != nil {
			return ferr
		}
		return fmt.Errorf("decoding %s/%d@%d: %w", p.topic, p.partition, m.Offset, runtime.Poison(err))
	}
	var state *schema.PresenceState
	if server, _ := mxid.ServerOf(rec.UserID); server == p.r.cfg.ServerName {
		state = &rec.PresenceState
	} else {
		// Remote users' presence comes from their own servers.
		p.r.m.presence.WithLabelValues("not_local").Inc()
	}
	p.pos = max(p.pos, rec.Position)
	return p.batch.Add(ctx, m, state, done)
}

// flush routes kept records.
func (p *presenceHandler) flush(ctx context.Context, kept []*schema.PresenceState, allDone func()) error {
	if b := p.r.barrier; b != nil {
		waitStart := time.Now()
		if err := b.wait(ctx); err != nil {
			return fmt.Errorf("waiting for the room records before presence: %w", err)
		}
		p.r.m.presenceOrder.Observe(time.Since(waitStart).Seconds())
	}
	start := time.Now()
	pos := p.pos
	latest := map[string]schema.PresenceState{} // a later state of a user replaces an earlier one
	var users []string
	for _, st := range kept {
		if st == nil {
			continue
		}
		if _, seen := latest[st.UserID]; !seen {
			users = append(users, st.UserID)
		}
		latest[st.UserID] = *st
	}
	var msgs []kafka.Message
	if len(users) > 0 {
		dests, err := p.r.store.presenceDestinations(ctx, users, p.r.cfg.ServerName)
		if err != nil {
			return err
		}
		for _, u := range users {
			p.r.m.presenceDests.Observe(float64(len(dests.byUser[u])))
		}
		for _, d := range dests.servers {
			states := make([]schema.PresenceState, 0, len(dests.byServer[d]))
			for _, u := range dests.byServer[d] {
				states = append(states, latest[u])
			}
			for _, run := range splitStates(states) {
				m, err := presenceRecords([]string{d}, run, pos, p.r.cfg.Instance)
				if err != nil {
					return err
				}
				msgs = append(msgs, m...)
			}
		}
	}
	p.r.m.presenceRoute.Observe(time.Since(start).Seconds())
	if len(msgs) == 0 {
		allDone()
	} else {
		if err := p.r.out.Write(ctx, msgs, allDone); err != nil {
			return fmt.Errorf("writing presence of %d users to their servers: %w", len(users), err)
		}
		p.r.m.presence.WithLabelValues("change").Add(float64(len(msgs)))
	}
	p.r.m.presenceBatch.Observe(float64(len(kept)))
	return nil
}

// joinPresence is what a join tells remote servers about local users' presence:
//   - a remote server joining a room it was not in gets the current presence of
//     the local users in the room, without stale offline states and without
//     users it already shares another room with (it has their presence);
//   - when a local user joins, every remote server in the room gets the user's
//     presence.
//
// Servers that were in the room and gained no one get nothing. state is the
// room after the join.
func (p *partitionHandler) joinPresence(ctx context.Context, rec schema.RoomRecord, state *routing.RoomState, serverWasJoined bool) ([]kafka.Message, error) {
	user := *rec.StateKey
	server, _ := mxid.ServerOf(user)
	ours := p.r.cfg.ServerName
	switch {
	case server == ours:
		st, ok, err := p.r.store.presenceOf(ctx, user)
		if err != nil || !ok {
			return nil, err
		}
		var dests []string
		for _, s := range state.JoinedServers() {
			if s != ours {
				dests = append(dests, s)
			}
		}
		if len(dests) == 0 {
			return nil, nil
		}
		p.r.m.presence.WithLabelValues("local_join").Add(float64(len(dests)))
		return presenceRecords(dests, []schema.PresenceState{st}, rec.Position, p.r.cfg.Instance)
	case !serverWasJoined:
		states, err := p.r.store.presenceForNewServer(ctx, rec.RoomID, server, ours, time.Now().Add(-staleOffline).UnixMilli())
		if err != nil {
			return nil, err
		}
		// The stored members may be ahead of memory when the join is replayed:
		// a local user who joined later tells the server at their own join.
		states = slices.DeleteFunc(states, func(st schema.PresenceState) bool { return !state.IsJoined(st.UserID) })
		if len(states) == 0 {
			return nil, nil
		}
		var msgs []kafka.Message
		for _, run := range splitStates(states) {
			m, err := presenceRecords([]string{server}, run, rec.Position, p.r.cfg.Instance)
			if err != nil {
				return nil, err
			}
			msgs = append(msgs, m...)
		}
		p.r.m.presence.WithLabelValues("server_join").Add(float64(len(msgs)))
		return msgs, nil
	}
	return nil, nil
}

// presenceRecords builds one outbound presence record per destination.
func presenceRecords(dests []string, states []schema.PresenceState, position int64, instance string) ([]kafka.Message, error) {
	value := func(d string) ([]byte, error) {
		return schema.OutboundRecord{V: schema.SchemaVersion, Kind: schema.KindPresence, Destination: d, Presence: states}.Marshal()
	}
	headers := schema.NewHeaders(schema.KindPresence).WithPosition(position).WithInstance(instance)
	msgs := make([]kafka.Message, 0, len(dests))
	for _, d := range dests {
		v, err := value(d)
		if err != nil {
			return nil, fmt.Errorf("encoding presence record for %s: %w", d, err)
		}
		msgs = append(msgs, headers.Message([]byte(d), v))
	}
	return msgs, nil
}

// destinations are the remote servers sharing a room with each of some users.
type destinations struct {
	servers  []string            // every server, sorted
	byServer map[string][]string // server → users, in the order asked
	byUser   map[string][]string
}

// presenceDestinations finds the remote servers sharing a room with each of
// users: the users' rooms, then each room's remote servers once (rooms are
// shared by many users of a batch), joined here rather than in SQL, which
// would return a row per (user, room, server).
func (s store) presenceDestinations(ctx context.Context, users []string, ours string) (destinations, error) {
	fail := func(err error) (destinations, error) {
		return destinations{}, fmt.Errorf("finding the servers sharing a room with %d users: %w", len(users), err)
	}
	rows, err := s.pool.Query(ctx, `SELECT user_id, room_id FROM router_room_members WHERE user_id = ANY($1)`, users)
	if err != nil {
		return fail(err)
	}
	roomsOf := map[string][]string{}
	var rooms []string
	seenRoom := map[string]bool{}
	var u, room string
	if _, err := pgx.ForEachRow(rows, []any{&u, &room}, func() error {
		roomsOf[u] = append(roomsOf[u], room)
		if !seenRoom[room] {
			seenRoom[room] = true
			rooms = append(rooms, room)
		}
		return nil
	}); err != nil {
		return fail(err)
	}
	serversOf := map[string][]string{}
	if len(rooms) > 0 {
		rows, err := s.pool.Query(ctx, `SELECT DISTINCT room_id, server FROM router_room_members WHERE room_id = ANY($1) AND server <> $2`, rooms, ours)
		if err != nil {
			return fail(err)
		}
		var srv string
		if _, err := pgx.ForEachRow(rows, []any{&room, &srv}, func() error {
			serversOf[room] = append(serversOf[room], srv)
			return nil
		}); err != nil {
			return fail(err)
		}
	}
	d := destinations{byServer: map[string][]string{}, byUser: map[string][]string{}}
	for _, u := range users {
		seen := map[string]bool{}
		for _, r := range roomsOf[u] {
			for _, srv := range serversOf[r] {
				if seen[srv] {
					continue
				}
				seen[srv] = true
				d.byUser[u] = append(d.byUser[u], srv)
				if len(d.byServer[srv]) == 0 {
					d.servers = append(d.servers, srv)
				}
				d.byServer[srv] = append(d.byServer[srv], u)
			}
		}
	}
	slices.Sort(d.servers)
	return d, nil
}

const presenceColumns = `p.user_id, p.state, p.status_msg, p.last_active_ts, p.currently_active`

func scanPresence(row pgx.CollectableRow) (schema.PresenceState, error) {
	var st schema.PresenceState
	err := row.Scan(&st.UserID, &st.Presence, &st.StatusMsg, &st.LastActiveTS, &st.CurrentlyActive)
	return st, err
}

// presenceOf is a user's last published presence (false when there is none).
func (s store) presenceOf(ctx context.Context, user string) (schema.PresenceState, bool, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+presenceColumns+` FROM presence_stream p WHERE p.user_id = $1`, user)
	if err != nil {
		return schema.PresenceState{}, false, fmt.Errorf("reading presence of %s: %w", user, err)
	}
	states, err := pgx.CollectRows(rows, scanPresence)
	if err != nil || len(states) == 0 {
		if err != nil {
			err = fmt.Errorf("reading presence of %s: %w", user, err)
		}
		return schema.PresenceState{}, false, err
	}
	return states[0], true, nil
}

// presenceForNewServer is the presence of the local users in room for a server
// that just joined it: without offline states last active before staleBefore
// that carry no status message, and without users the server already shares
// another room with.
func (s store) presenceForNewServer(ctx context.Context, room, server, ours string, staleBefore int64) ([]schema.PresenceState, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+presenceColumns+`
		FROM router_room_members m JOIN presence_stream p USING (user_id)
		WHERE m.room_id = $1 AND m.server = $3
		  AND NOT (p.state = 'offline' AND COALESCE(p.status_msg, '') = '' AND p.last_active_ts < $4)
		  AND NOT EXISTS (
			SELECT 1 FROM router_room_members mine JOIN router_room_members theirs ON theirs.room_id = mine.room_id
			WHERE mine.user_id = m.user_id AND mine.room_id <> $1 AND theirs.server = $2)
		ORDER BY p.user_id`, room, server, ours, staleBefore)
	if err != nil {
		return nil, fmt.Errorf("reading presence in %s for %s: %w", room, server, err)
	}
	states, err := pgx.CollectRows(rows, scanPresence)
	if err != nil {
		return nil, fmt.Errorf("reading presence in %s for %s: %w", room, server, err)
	}
	return states, nil
}
