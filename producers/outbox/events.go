package outbox

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fedpipe/fedpipe/federation/mxid"
)

// insertEventsSQL stores a batch of events in one statement. The batch takes
// one position per event from fedpipe_next_stream_ordering(), which takes the
// transaction's xid before each position (see 0001_streams.sql), sorts them,
// and gives the i-th smallest to the i-th event (unnest reads its arrays in
// parallel): the events of a batch get increasing positions in batch order by
// construction, whatever order the executor calls the function in. (A column
// default would not do: PostgreSQL does not promise to evaluate it in the
// order of an INSERT … SELECT … ORDER BY.) The CTE is MATERIALIZED so that
// the volatile function runs exactly once per event.
const insertEventsSQL = `WITH taken AS MATERIALIZED (
		SELECT array_agg(position ORDER BY position) AS positions
		FROM (SELECT fedpipe_next_stream_ordering() AS position FROM generate_series(1, cardinality($1::text[]))) AS t
	)
	INSERT INTO events (stream_ordering, event_id, room_id, room_version, sender, origin, type, state_key, json)
	SELECT e.* FROM taken,
		unnest(taken.positions, $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
		AS e(stream_ordering, event_id, room_id, room_version, sender, origin, type, state_key, json)
	RETURNING event_id, stream_ordering`

// insertEventSQL stores one event: how PersistBatch finds the event that made
// a batch fail.
const insertEventSQL = `INSERT INTO events (event_id, room_id, room_version, sender, origin, type, state_key, json)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING stream_ordering`

// storeEvents inserts events (validated) inside tx in one statement and
// returns their positions in batch order, increasing. When the statement
// fails, the error is a *batchError.
func storeEvents(ctx context.Context, tx pgx.Tx, events []EventWithDeltas) ([]int64, error) {
	n := len(events)
	var ids, rooms, versions, senders, origins, types, pdus = make([]string, n), make([]string, n),
		make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	stateKeys := make([]*string, n)
	for i, ev := range events {
		ids[i], rooms[i], versions[i], senders[i], origins[i], types[i], stateKeys[i], pdus[i] =
			ev.EventID, ev.RoomID, ev.RoomVersion, ev.Sender, mxid.ServerPart(ev.Sender), ev.Type, ev.StateKey, string(ev.PDU)
	}
	rows, err := tx.Query(ctx, insertEventsSQL, ids, rooms, versions, senders, origins, types, stateKeys, pdus)
	if err != nil {
		return nil, &batchError{events, err}
	}
	// The rows come back in no promised order: each is placed by its event_id.
	index := make(map[string]int, n)
	for i, id := range ids {
		index[id] = i // a repeated event_id fails the statement: no row comes back
	}
	positions := make([]int64, n)
	stored := 0
	var id string
	var pos int64
	_, err = pgx.ForEachRow(rows, []any{&id, &pos}, func() error {
		i, ok := index[id]
		if !ok || positions[i] != 0 {
			return fmt.Errorf("unexpected row of %s at position %d", id, pos)
		}
		positions[i] = pos
		stored++
		return nil
	})
	if err != nil {
		return nil, &batchError{events, err}
	}
	if stored != n {
		return nil, fmt.Errorf("storing %s: %d rows stored", batchName(events), stored)
	}
	for i := 1; i < n; i++ {
		if positions[i] <= positions[i-1] {
			// Cannot happen (insertEventsSQL sorts the positions); the
			// caller must not commit events out of their order.
			return nil, fmt.Errorf("storing %s: event %s took position %d after %d", batchName(events), events[i].EventID, positions[i], positions[i-1])
		}
	}
	return positions, nil
}

// batchError is the failure of the statement storing a batch of events. It
// names the event PostgreSQL names (a duplicate event_id, in its detail), else
// the batch; PersistBatch then finds the event by storing the batch again one
// event at a time.
type batchError struct {
	events []EventWithDeltas
	err    error
}

func (e *batchError) Error() string {
	var pgErr *pgconn.PgError
	if errors.As(e.err, &pgErr) && pgErr.Code == "23505" {
		// "Key (event_id)=($…) already exists." Absent when the role may
		// not read the table.
		for _, ev := range e.events {
			if strings.Contains(pgErr.Detail, "=("+ev.EventID+")") {
				return "storing event " + ev.EventID + ": " + e.err.Error()
			}
		}
	}
	return "storing " + batchName(e.events) + ": " + e.err.Error()
}

func (e *batchError) Unwrap() error { return e.err }

// badData reports whether the statement failed on data, not on the database:
// SQLSTATE class 22 (data exception) or 23 (integrity constraint violation).
func (e *batchError) badData() bool {
	var pgErr *pgconn.PgError
	return errors.As(e.err, &pgErr) && (strings.HasPrefix(pgErr.Code, "22") || strings.HasPrefix(pgErr.Code, "23"))
}

// findBadEvent stores events one at a time in a transaction of its own that
// it rolls back, and returns the error of the first that fails: the event
// that made the batch fail with err, named as when the outbox stored events
// one by one. It returns err when none fails (what failed the batch is gone)
// or when the database fails instead.
func findBadEvent(ctx context.Context, pool *pgxpool.Pool, events []EventWithDeltas, err error) error {
	var found error
	_ = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, found = insertAll(ctx, tx, len(events), insertEventSQL,
			func(i int) []any {
				ev := events[i]
				return []any{ev.EventID, ev.RoomID, ev.RoomVersion, ev.Sender, mxid.ServerPart(ev.Sender), ev.Type, ev.StateKey, string(ev.PDU)}
			},
			func(i int) string { return "event " + events[i].EventID })
		return errRollback
	})
	var pgErr *pgconn.PgError
	if errors.As(found, &pgErr) && (strings.HasPrefix(pgErr.Code, "22") || strings.HasPrefix(pgErr.Code, "23")) {
		return found
	}
	return err
}

// errRollback makes pgx.BeginFunc roll back.
var errRollback = errors.New("rolled back")

// batchName names a batch of events in errors.
func batchName(events []EventWithDeltas) string {
	if len(events) == 1 {
		return "event " + events[0].EventID
	}
	return fmt.Sprintf("%d events (%s … %s)", len(events), events[0].EventID, events[len(events)-1].EventID)
}
