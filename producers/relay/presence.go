package relay

import (
	"context"
	"fmt"
	"strconv"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/schema"
)

// publishPresence publishes the presence_stream rows after pos up to upto, a
// batch at a time, storing the position after each acknowledged batch. The
// table holds one row per user (a newer state replaces one not yet published),
// so a batch never holds two records of one user, and a failed batch is
// published again whole.
func (r *Relay) publishPresence(ctx context.Context, pos, upto int64) error {
	for pos < upto {
		rows, err := r.pool.Query(ctx, `SELECT stream_id, user_id, state, status_msg, last_active_ts, currently_active
			FROM presence_stream WHERE stream_id > $1 AND stream_id <= $2 ORDER BY stream_id LIMIT $3`, pos, upto, r.cfg.BatchSize)
		if err != nil {
			return fmt.Errorf("reading presence: %w", err)
		}
		var msgs []kafka.Message
		var last int64
		for rows.Next() {
			rec := schema.PresenceRecord{V: schema.SchemaVersion, Kind: schema.KindPresence}
			if err := rows.Scan(&rec.Position, &rec.UserID, &rec.Presence, &rec.StatusMsg, &rec.LastActiveTS, &rec.CurrentlyActive); err != nil {
				rows.Close()
				return fmt.Errorf("reading presence: %w", err)
			}
			v, err := rec.Marshal()
			if err != nil {
				rows.Close()
				return fmt.Errorf("encoding presence of %s: %w", rec.UserID, err)
			}
			last = rec.Position
			msgs = append(msgs, kafka.Message{Key: []byte(rec.UserID), Value: v, Headers: []kafka.Header{
				{Key: schema.HeaderKind, Value: []byte(schema.KindPresence)},
				{Key: schema.HeaderSchema, Value: []byte(strconv.Itoa(schema.SchemaVersion))},
				{Key: schema.HeaderPosition, Value: []byte(strconv.FormatInt(rec.Position, 10))},
				{Key: schema.HeaderInstance, Value: []byte(r.cfg.Instance)},
			}})
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("reading presence: %w", err)
		}
		end := upto
		if len(msgs) == r.cfg.BatchSize {
			end = last
		}
		if len(msgs) > 0 {
			if err := r.write(ctx, r.presence, "presence", msgs); err != nil {
				return fmt.Errorf("publishing %d presence records: %w", len(msgs), err)
			}
		}
		if _, err := r.pool.Exec(ctx, `INSERT INTO relay_positions (stream, position) VALUES ($1, $2)
			ON CONFLICT (stream) DO UPDATE SET position = EXCLUDED.position`, presenceStream, end); err != nil {
			return fmt.Errorf("storing presence relay position %d: %w", end, err)
		}
		pos = end
		r.presencePublished.Add(float64(len(msgs)))
		r.presencePosition.Set(float64(pos))
	}
	return nil
}
