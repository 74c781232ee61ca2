package router

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fedpipe/fedpipe/schema"
)

// store is the router's PostgreSQL state (schema/migrations/0002_router.sql).
type store struct{ pool *pgxpool.Pool }

// load returns a room's joined users and last stored position (0 for a room
// never seen), read in one statement so they agree (loadRooms).
func (s store) load(ctx context.Context, roomID string) (joined []string, last int64, err error) {
	rooms, err := s.loadRooms(ctx, []string{roomID})
	if err != nil {
		return nil, 0, err
	}
	return rooms[roomID].joined, rooms[roomID].last, nil
}

// joinedBefore rebuilds the users joined to a room as of the position before pos
// from the history of changes.
func (s store) joinedBefore(ctx context.Context, roomID string, pos int64) ([]string, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT user_id FROM (
			SELECT DISTINCT ON (user_id) user_id, joined
			FROM router_membership_changes
			WHERE room_id = $1 AND position < $2
			ORDER BY user_id, position DESC
		) latest WHERE joined`, roomID, pos)
	if err != nil {
		return nil, fmt.Errorf("loading membership of %s before %d: %w", roomID, pos, err)
	}
	joined, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("loading membership of %s before %d: %w", roomID, pos, err)
	}
	return joined, nil
}

// change is one stored change of a user's joined-ness.
type change struct {
	roomID, userID string
	position       int64
	joined         bool
}

// save stores changes, each with its room's last position, in one transaction:
// the statements of a batch run in one implicit transaction, one round trip.
// Every statement is an upsert, so saving a change again is harmless.
func (s store) save(ctx context.Context, changes ...change) error {
	if len(changes) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	queueChanges(b, changes)
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("storing %d membership changes: %w", len(changes), err)
	}
	return nil
}

// queueChanges queues the statements that store changes (see save): one per
// table, whatever the number of changes, each given its rows as arrays. One
// statement per change cost PostgreSQL a bind and an execution each: most of
// its CPU for the router's store (issue 18).
//
// The result is that of storing the changes one at a time, in order. One
// INSERT … ON CONFLICT cannot touch a row twice, so the changes are collapsed
// per row first: a history row as the last change at its (room, user,
// position) says, a membership as the user's last change in the room says
// (joined: inserted; left: deleted), a room at the greatest position of its
// changes (and never below the stored one). Rows go in key order, so that two
// members storing the same rooms (briefly, across a rebalance) lock them in
// the same order.
func queueChanges(b *pgx.Batch, changes []change) {
	type memberKey struct{ room, user string }
	type historyKey struct {
		room, user string
		position   int64
	}
	history := make(map[historyKey]bool, len(changes))
	members := make(map[memberKey]bool, len(changes))
	rooms := make(map[string]int64)
	for _, c := range changes {
		history[historyKey{c.roomID, c.userID, c.position}] = c.joined
		members[memberKey{c.roomID, c.userID}] = c.joined
		if last, ok := rooms[c.roomID]; !ok || c.position > last {
			rooms[c.roomID] = c.position
		}
	}

	hkeys := slices.SortedFunc(maps.Keys(history), func(a, b historyKey) int {
		return cmp.Or(cmp.Compare(a.room, b.room), cmp.Compare(a.user, b.user), cmp.Compare(a.position, b.position))
	})
	hRooms, hUsers := make([]string, len(hkeys)), make([]string, len(hkeys))
	hPositions, hJoined := make([]int64, len(hkeys)), make([]bool, len(hkeys))
	for i, k := range hkeys {
		hRooms[i], hUsers[i], hPositions[i], hJoined[i] = k.room, k.user, k.position, history[k]
	}
	b.Queue(`INSERT INTO router_membership_changes (room_id, user_id, position, joined)
		SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::boolean[])
		ON CONFLICT (room_id, user_id, position) DO UPDATE SET joined = EXCLUDED.joined`, hRooms, hUsers, hPositions, hJoined)

	var joinRooms, joinUsers, leaveRooms, leaveUsers []string
	for _, k := range slices.SortedFunc(maps.Keys(members), func(a, b memberKey) int {
		return cmp.Or(cmp.Compare(a.room, b.room), cmp.Compare(a.user, b.user))
	}) {
		if members[k] {
			joinRooms, joinUsers = append(joinRooms, k.room), append(joinUsers, k.user)
		} else {
			leaveRooms, leaveUsers = append(leaveRooms, k.room), append(leaveUsers, k.user)
		}
	}
	if len(joinRooms) > 0 {
		b.Queue(`INSERT INTO router_room_members (room_id, user_id)
			SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING`, joinRooms, joinUsers)
	}
	if len(leaveRooms) > 0 {
		b.Queue(`DELETE FROM router_room_members m USING unnest($1::text[], $2::text[]) AS gone(room_id, user_id)
			WHERE m.room_id = gone.room_id AND m.user_id = gone.user_id`, leaveRooms, leaveUsers)
	}

	roomIDs := slices.Sorted(maps.Keys(rooms))
	positions := make([]int64, len(roomIDs))
	for i, r := range roomIDs {
		positions[i] = rooms[r]
	}
	b.Queue(`INSERT INTO router_rooms (room_id, last_position)
		SELECT * FROM unnest($1::text[], $2::bigint[])
		ON CONFLICT (room_id) DO UPDATE SET last_position = GREATEST(router_rooms.last_position, EXCLUDED.last_position)`, roomIDs, positions)
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

// loaded is a room's stored membership: its joined users and last position.
type loaded struct {
	joined []string
	last   int64
}

// loadRooms reads the stored membership of rooms in one query (load's, for
// many rooms); a room never seen has none, at position 0.
func (s store) loadRooms(ctx context.Context, rooms []string) (map[string]loaded, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT r.room_id, r.last_position, m.user_id
		FROM router_rooms r LEFT JOIN router_room_members m USING (room_id)
		WHERE r.room_id = ANY($1)`, rooms)
	if err != nil {
		return nil, fmt.Errorf("loading membership of %d rooms: %w", len(rooms), err)
	}
	out := make(map[string]loaded, len(rooms))
	var room string
	var last int64
	var user *string
	if _, err := pgx.ForEachRow(rows, []any{&room, &last, &user}, func() error {
		l := out[room]
		l.last = last
		if user != nil {
			l.joined = append(l.joined, *user)
		}
		out[room] = l
		return nil
	}); err != nil {
		return nil, fmt.Errorf("loading membership of %d rooms: %w", len(rooms), err)
	}
	return out, nil
}

// saveAndLookUp stores changes (as save does) and then looks up the presence
// each join tells (joinPresence), in one round trip and one implicit
// transaction: the look-ups see the changes.
// ours is our server name.
func (s store) saveAndLookUp(ctx context.Context, changes []change, joins []*joinPresence, ours string) error {
	if len(changes) == 0 && len(joins) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	if len(changes) > 0 {
		queueChanges(b, changes)
	}
	if len(joins) > 0 {
		queueLookUps(b, joins, ours)
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("storing %d membership changes and looking up the presence of %d joins: %w", len(changes), len(joins), err)
	}
	return nil
}

// queueLookUps queues one query for the presence of every join (see
// joinPresence), each row numbered with its join's index:
//   - a local user's join: the user's presence;
//   - a remote server's join: the local users in the room with presence,
//     without users the server already shares another room with
//     (presence.ForNewServer leaves out more), by user.
//
// OFFSET 0 keeps a server's look-up a subquery run per join, as the query per
// join was: flattened, the planner matched the joining server only after
// reading every member of each local user's other rooms (700 ms instead of
// 20 ms for 200 joins among 2,000 rooms of 105 members).
func queueLookUps(b *pgx.Batch, joins []*joinPresence, ours string) {
	var localN, serverN []int32
	var localUsers, serverRooms, servers []string
	for i, j := range joins {
		if j.local() {
			localN, localUsers = append(localN, int32(i)), append(localUsers, *j.rec.StateKey)
		} else {
			serverN, serverRooms, servers = append(serverN, int32(i)), append(serverRooms, j.rec.RoomID), append(servers, j.server)
		}
	}
	b.Queue(`SELECT j.n, `+presenceColumns+`
		FROM unnest($1::int[], $2::text[]) AS j(n, user_id) JOIN presence_stream p ON p.user_id = j.user_id
		UNION ALL
		SELECT j.n, `+presenceColumns+`
		FROM unnest($3::int[], $4::text[], $5::text[]) AS j(n, room_id, server), LATERAL (
			SELECT `+presenceColumns+` FROM router_room_members m JOIN presence_stream p USING (user_id)
			WHERE m.room_id = j.room_id AND m.server = $6
			  AND NOT EXISTS (
				SELECT 1 FROM router_room_members mine JOIN router_room_members theirs ON theirs.room_id = mine.room_id
				WHERE mine.user_id = m.user_id AND mine.room_id <> j.room_id AND theirs.server = j.server)
			OFFSET 0) p
		ORDER BY 1, 2`, localN, localUsers, serverN, serverRooms, servers, ours).Query(func(rows pgx.Rows) error {
		defer rows.Close()
		for rows.Next() {
			var n int32
			var st schema.PresenceState
			if err := rows.Scan(&n, &st.UserID, &st.Presence, &st.StatusMsg, &st.LastActiveTS, &st.CurrentlyActive); err != nil {
				return err
			}
			if n < 0 || int(n) >= len(joins) {
				return fmt.Errorf("presence look-up returned join %d of %d", n, len(joins))
			}
			joins[n].states = append(joins[n].states, st)
		}
		return rows.Err()
	})
}
