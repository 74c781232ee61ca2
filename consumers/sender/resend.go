package sender

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// OpCatchUp: rooms to resend were recorded for the destination; catch up now.
const OpCatchUp = "catch_up"

// Resend makes dest catch up from stream position from, for a remote that
// lost data: the latest of our events after from in every room dest is
// joined to is recorded for catch-up (sender_catchup), and the member owning
// dest is signalled to catch up. As after an outage, each room's latest event
// is sent (one room per transaction, destinations woken paced) and the remote
// fetches the events before it from the homeserver. What dest accepted after
// from is forgotten (sender_destination_rooms), so that a replay sends it
// again too. It returns how many rooms were recorded.
func Resend(ctx context.Context, pool *pgxpool.Pool, dest, ours string, from int64) (rooms int64, err error) {
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO sender_catchup (destination, room_id, position, event_id)
			SELECT $1, e.room_id, e.stream_ordering, e.event_id FROM (
				SELECT DISTINCT ON (room_id) room_id, stream_ordering, event_id FROM events
				WHERE stream_ordering > $2 AND origin = $3
					AND room_id IN (SELECT room_id FROM router_room_members WHERE server = $1)
				ORDER BY room_id, stream_ordering DESC) e
			ON CONFLICT (destination, room_id) DO UPDATE SET position = EXCLUDED.position, event_id = EXCLUDED.event_id
			WHERE sender_catchup.position < EXCLUDED.position`, dest, from, ours)
		if err != nil {
			return err
		}
		rooms = tag.RowsAffected()
		// What it accepted since is gone: a replay may send it again.
		if _, err := tx.Exec(ctx, `UPDATE sender_destination_rooms SET acked_position = $2, updated_at = now()
			WHERE destination = $1 AND acked_position > $2`, dest, from); err != nil {
			return err
		}
		return Signal(ctx, tx, OpCatchUp, dest)
	})
	if err != nil {
		return 0, fmt.Errorf("recording what %s must be sent again: %w", dest, err)
	}
	return rooms, nil
}

// PositionAt is the stream position just before the first event stored at or
// after t (events.inserted_at): resending from it resends what was stored
// from t on.
func PositionAt(ctx context.Context, pool *pgxpool.Pool, t time.Time) (int64, error) {
	var pos int64
	err := pool.QueryRow(ctx, `SELECT COALESCE((SELECT min(stream_ordering) - 1 FROM events WHERE inserted_at >= $1),
		(SELECT max(stream_ordering) FROM events), 0)`, t).Scan(&pos)
	if err != nil {
		return 0, fmt.Errorf("finding the stream position at %s: %w", t.Format(time.RFC3339), err)
	}
	return pos, nil
}
