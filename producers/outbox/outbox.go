// Package outbox is the Go producer library: it persists a homeserver's events
// and their state deltas inside the caller's PostgreSQL transaction, so an event
// reaches federation if and only if the transaction that stores it commits.
package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Event is one event to persist.
type Event struct {
	EventID     string
	RoomID      string
	RoomVersion string
	Sender      string
	Type        string
	// StateKey is set for state events.
	StateKey *string
	// PDU is the event as it will be sent over federation; stored byte for byte.
	PDU json.RawMessage
}

// StateDelta is a change of the room's current state caused by an event.
type StateDelta struct {
	// RoomID may be left empty: it is the event's room.
	RoomID, Type, StateKey string
	// EventID is the new state event, "" when the entry was removed.
	EventID     string
	PrevEventID string
	// Membership and PrevMembership are set for m.room.member only.
	Membership, PrevMembership string
}

// EventWithDeltas is an event with the state deltas it causes, in the order a
// consumer must apply them.
type EventWithDeltas struct {
	Event
	Deltas []StateDelta
}

// ValidationError names the field of the input that is wrong, e.g.
// "events[3].sender"; callers answer it as a client error, never retry it.
type ValidationError struct {
	Field, Reason string
}

func (e *ValidationError) Error() string { return e.Field + ": " + e.Reason }

// deltaColumns are the columns of current_state_delta_stream written by CopyFrom.
var deltaColumns = []string{"stream_id", "idx", "room_id", "type", "state_key", "event_id", "prev_event_id", "membership", "prev_membership"}

// Persist validates events, stores them and their deltas inside tx and returns
// each event's stream position, increasing in the order of events. Nothing is
// visible to the relay until tx commits; a *ValidationError means nothing was
// written. The events go in one statement: when it fails (tx is then
// aborted), the error names the event PostgreSQL names (a duplicate
// event_id), else the batch; PersistBatch finds the event in any case.
func Persist(ctx context.Context, tx pgx.Tx, events []EventWithDeltas) ([]int64, error) {
	for i := range events {
		if err := Validate(&events[i]); err != nil {
			var ve *ValidationError
			if errors.As(err, &ve) {
				ve.Field = fmt.Sprintf("events[%d].%s", i, ve.Field)
			}
			return nil, err
		}
	}
	if len(events) == 0 {
		return nil, nil
	}
	// One statement for all events, positions increasing in batch order.
	positions, err := storeEvents(ctx, tx, events)
	if err != nil {
		return nil, err
	}
	var rows [][]any
	for i, ev := range events {
		for j, d := range ev.Deltas {
			rows = append(rows, []any{positions[i], j, ev.RoomID, d.Type, d.StateKey, d.EventID,
				nullable(d.PrevEventID), nullable(d.Membership), nullable(d.PrevMembership)})
		}
	}
	if len(rows) > 0 {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"current_state_delta_stream"}, deltaColumns, pgx.CopyFromRows(rows)); err != nil {
			return nil, fmt.Errorf("storing state deltas: %w", err)
		}
	}
	return positions, nil
}

// PersistBatch persists events in a transaction of its own and returns their
// stream positions once it has committed. When an event's data fails the
// batch (SQLSTATE class 22 or 23: a duplicate event_id, say), the error is
// that of the first such event, named ("storing event $…: …"), as if the
// events had been stored one by one.
func PersistBatch(ctx context.Context, pool *pgxpool.Pool, events []EventWithDeltas) ([]int64, error) {
	return persistBatch(ctx, pool, events, Persist)
}

// persistBatch is PersistBatch storing events with persist.
func persistBatch(ctx context.Context, pool *pgxpool.Pool, events []EventWithDeltas,
	persist func(context.Context, pgx.Tx, []EventWithDeltas) ([]int64, error)) ([]int64, error) {
	var positions []int64
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var err error
		positions, err = persist(ctx, tx, events)
		return err
	})
	var be *batchError
	if errors.As(err, &be) && be.badData() {
		return nil, findBadEvent(ctx, pool, events, err)
	}
	if err != nil {
		return nil, err
	}
	return positions, nil
}

// insertAll runs the INSERT … RETURNING stream position sql once per row
// (args(i) its arguments) in one round trip inside tx and returns the
// positions in row order; what(i) names a row in errors. A stream table's
// positions come from its column default, so every row takes its xid before
// its position (see 0001_streams.sql).
func insertAll(ctx context.Context, tx pgx.Tx, rows int, sql string, args func(i int) []any, what func(i int) string) ([]int64, error) {
	batch := &pgx.Batch{}
	for i := 0; i < rows; i++ {
		batch.Queue(sql, args(i)...)
	}
	positions := make([]int64, rows)
	br := tx.SendBatch(ctx, batch)
	for i := range positions {
		if err := br.QueryRow().Scan(&positions[i]); err != nil {
			_ = br.Close()
			return nil, fmt.Errorf("storing %s: %w", what(i), err)
		}
	}
	if err := br.Close(); err != nil {
		return nil, fmt.Errorf("storing %d rows: %w", rows, err)
	}
	return positions, nil
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}
