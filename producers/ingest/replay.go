package ingest

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fedpipe/fedpipe/producers/outbox"
)

// replayed handles a unique violation on event_id. A caller whose request
// committed but whose answer was lost sends the same request again: when every
// event is already stored with the same PDU bytes, it gets the stored positions,
// so retrying is always safe. Any other overlap is a conflict naming the first
// stored event. Other errors pass unchanged.
func replayed(ctx context.Context, pool *pgxpool.Pool, events []outbox.EventWithDeltas, err error) (any, error) {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" || pgErr.ConstraintName != "events_event_id_key" {
		return nil, err
	}
	ids := make([]string, len(events))
	for i, ev := range events {
		ids[i] = ev.EventID
	}
	rows, qerr := pool.Query(ctx, "SELECT event_id, stream_ordering, json FROM events WHERE event_id = ANY($1)", ids)
	if qerr != nil {
		return nil, err
	}
	type stored struct {
		position int64
		pdu      string
	}
	found := map[string]stored{}
	for rows.Next() {
		var id string
		var s stored
		if qerr := rows.Scan(&id, &s.position, &s.pdu); qerr != nil {
			rows.Close()
			return nil, err
		}
		found[id] = s
	}
	if rows.Err() != nil {
		return nil, err
	}
	positions := make([]int64, len(events))
	replay := true
	for i, ev := range events {
		s, ok := found[ev.EventID]
		replay = replay && ok && s.pdu == string(ev.PDU)
		positions[i] = s.position
	}
	if replay {
		return persistResponse{Positions: positions}, nil
	}
	conflict := func(i int, why string) error {
		return &requestError{http.StatusConflict, "M_INVALID_PARAM",
			fmt.Sprintf("events[%d].event_id: %s is already persisted %s; nothing in this request was", i, events[i].EventID, why)}
	}
	for i, ev := range events {
		if s, ok := found[ev.EventID]; ok && s.pdu != string(ev.PDU) {
			return nil, conflict(i, "with other PDU bytes")
		}
	}
	for i, ev := range events {
		if _, ok := found[ev.EventID]; ok {
			return nil, conflict(i, "without the rest of this batch")
		}
	}
	return nil, err // the stored event is gone again: the caller may retry
}
