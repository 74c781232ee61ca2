package router

import (
	"context"
	"fmt"
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

// queueChanges queues the statements that store changes (see save).
func queueChanges(b *pgx.Batch, changes []change) {
	for _, c := range changes {
		b.Queue(`INSERT INTO router_membership_changes (room_id, user_id, position, joined) VALUES ($1, $2, $3, $4)
			ON CONFLICT (room_id, user_id, position) DO UPDATE SET joined = EXCLUDED.joined`, c.roomID, c.userID, c.position, c.joined)
		if c.joined {
			b.Queue(`INSERT INTO router_room_members (room_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, c.roomID, c.userID)
		} else {
			b.Queue(`DELETE FROM router_room_members WHERE room_id = $1 AND user_id = $2`, c.roomID, c.userID)
		}
		b.Queue(`INSERT INTO router_rooms (room_id, last_position) VALUES ($1, $2)
			ON CONFLICT (room_id) DO UPDATE SET last_position = GREATEST(router_rooms.last_position, EXCLUDED.last_position)`, c.roomID, c.position)
	}
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
	queueChanges(b, changes)
	for _, j := range joins {
		collect := func(rows pgx.Rows) error {
			states, err := pgx.CollectRows(rows, scanPresence)
			j.states = states
			return err
		}
		if j.local() {
			b.Queue(`SELECT `+presenceColumns+` FROM presence_stream p WHERE p.user_id = $1`, *j.rec.StateKey).Query(collect)
			continue
		}
		// The local users in the room, without users the server already
		// shares another room with (presence.ForNewServer leaves out more).
		b.Queue(`SELECT `+presenceColumns+`
			FROM router_room_members m JOIN presence_stream p USING (user_id)
			WHERE m.room_id = $1 AND m.server = $3
			  AND NOT EXISTS (
				SELECT 1 FROM router_room_members mine JOIN router_room_members theirs ON theirs.room_id = mine.room_id
				WHERE mine.user_id = m.user_id AND mine.room_id <> $1 AND theirs.server = $2)
			ORDER BY p.user_id`, j.rec.RoomID, j.server, ours).Query(collect)
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("storing %d membership changes and looking up the presence of %d joins: %w", len(changes), len(joins), err)
	}
	return nil
}
