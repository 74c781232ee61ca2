package sender

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/schema"
)

// Store is the PostgreSQL queue.Store: backoff and catch-up survive restarts and
// move with a destination's partition to another sender member.
type Store struct {
	pool *pgxpool.Pool

	mu        sync.Mutex
	successes []*successWrite // RecordSuccess calls waiting for a statement
	writeMu   sync.Mutex      // held by the call writing them
}

// NewStore returns a Store on pool (migrated with schema.Migrate).
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// LoadRetry implements queue.Store.
func (s *Store) LoadRetry(ctx context.Context, dest string) (queue.RetryState, error) {
	var interval, next int64
	var paused bool
	err := s.pool.QueryRow(ctx, "SELECT retry_interval_ms, next_attempt_ms, paused FROM sender_destinations WHERE destination = $1", dest).Scan(&interval, &next, &paused)
	if errors.Is(err, pgx.ErrNoRows) {
		return queue.RetryState{}, nil
	}
	if err != nil {
		return queue.RetryState{}, fmt.Errorf("loading backoff of %s: %w", dest, err)
	}
	return queue.RetryState{Interval: time.Duration(interval) * time.Millisecond, NextAttempt: time.UnixMilli(next), Paused: paused}, nil
}

// SaveRetry implements queue.Store. failure_ts keeps when the current run of
// failures began (the database's clock: it is for operators); paused is the
// operator's and is left alone.
func (s *Store) SaveRetry(ctx context.Context, dest string, r queue.RetryState) error {
	var next int64
	if r.Interval > 0 {
		next = r.NextAttempt.UnixMilli()
	}
	// retry_last_ts is when the destination last failed (Synapse's field of
	// that name, for the admin API), 0 when healthy.
	_, err := s.pool.Exec(ctx, `INSERT INTO sender_destinations (destination, retry_interval_ms, next_attempt_ms, failure_ts, retry_last_ts)
		VALUES ($1, $2::bigint, $3, CASE WHEN $2::bigint > 0 THEN (extract(epoch FROM clock_timestamp()) * 1000)::bigint END,
			CASE WHEN $2::bigint > 0 THEN (extract(epoch FROM clock_timestamp()) * 1000)::bigint ELSE 0 END)
		ON CONFLICT (destination) DO UPDATE SET retry_interval_ms = EXCLUDED.retry_interval_ms, next_attempt_ms = EXCLUDED.next_attempt_ms,
			failure_ts = CASE WHEN EXCLUDED.retry_interval_ms > 0 THEN COALESCE(sender_destinations.failure_ts, EXCLUDED.failure_ts) END,
			retry_last_ts = EXCLUDED.retry_last_ts,
			updated_at = now()`,
		dest, r.Interval.Milliseconds(), next)
	if err != nil {
		return fmt.Errorf("saving backoff of %s: %w", dest, err)
	}
	return nil
}

// RecordSuccess implements queue.Store: each room's accepted position and
// the destination's last successful position. Calls that arrive while
// another's statement runs are written together in the next one (group
// commit): a member records a success per transaction, from every
// destination's worker at once, and a statement each was the sender's
// largest PostgreSQL cost. Each call still returns once what it gave is
// written, or failed to be (the statement is bounded by the store's own
// timeout, not the caller's context: it writes for several callers).
func (s *Store) RecordSuccess(_ context.Context, dest string, acked []queue.RoomPosition) error {
	if len(acked) == 0 {
		return nil
	}
	w := &successWrite{dest: dest, acked: acked, done: make(chan error, 1)}
	s.mu.Lock()
	s.successes = append(s.successes, w)
	s.mu.Unlock()
	// One statement at a time: whoever writes next takes every call waiting,
	// so the calls queued behind it find theirs written.
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	for {
		select {
		case err := <-w.done:
			return err
		default:
		}
		s.mu.Lock()
		var ws []*successWrite
		rows := 0
		for len(s.successes) > 0 && (len(ws) == 0 || rows+len(s.successes[0].acked) <= maxSuccessRows) {
			rows += len(s.successes[0].acked)
			ws, s.successes = append(ws, s.successes[0]), s.successes[1:]
		}
		s.mu.Unlock()
		err := s.recordSuccesses(ws, rows)
		for _, x := range ws {
			x.done <- err
		}
	}
}

// successWrite is one RecordSuccess call waiting for its statement.
type successWrite struct {
	dest  string
	acked []queue.RoomPosition
	done  chan error
}

// maxSuccessRows bounds the rows of one success statement.
const maxSuccessRows = 5000

// recordSuccesses writes ws in one statement, bounded by the store's own
// timeout rather than a caller's context (it writes for several callers).
func (s *Store) recordSuccesses(ws []*successWrite, rows int) error {
	dests, rooms, positions := make([]string, 0, rows), make([]string, 0, rows), make([]int64, 0, rows)
	for _, w := range ws {
		for _, a := range w.acked {
			dests, rooms, positions = append(dests, w.dest), append(rooms, a.RoomID), append(positions, a.Position)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := s.pool.Exec(ctx, `WITH a AS (
			SELECT destination, room_id, max(position) AS position
			FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(destination, room_id, position) GROUP BY destination, room_id
		), rooms AS (
			INSERT INTO sender_destination_rooms (destination, room_id, acked_position) SELECT destination, room_id, position FROM a ORDER BY destination, room_id
			ON CONFLICT (destination, room_id) DO UPDATE SET acked_position = GREATEST(sender_destination_rooms.acked_position, EXCLUDED.acked_position), updated_at = now()
		)
		INSERT INTO sender_destinations (destination, last_successful_position) SELECT destination, max(position) FROM a GROUP BY destination ORDER BY destination
		ON CONFLICT (destination) DO UPDATE SET last_successful_position = GREATEST(sender_destinations.last_successful_position, EXCLUDED.last_successful_position),
			updated_at = now()
		WHERE sender_destinations.last_successful_position IS DISTINCT FROM GREATEST(sender_destinations.last_successful_position, EXCLUDED.last_successful_position)`,
		dests, rooms, positions)
	if err != nil {
		if len(ws) == 1 {
			return fmt.Errorf("recording last successful position of %s: %w", ws[0].dest, err)
		}
		return fmt.Errorf("recording last successful positions of %d destinations: %w", len(ws), err)
	}
	return nil
}

// AckedRooms implements queue.Store.
func (s *Store) AckedRooms(ctx context.Context, dest string) (map[string]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT room_id, acked_position FROM sender_destination_rooms WHERE destination = $1`, dest)
	if err != nil {
		return nil, fmt.Errorf("reading the rooms %s accepted: %w", dest, err)
	}
	acked, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (queue.RoomPosition, error) {
		var a queue.RoomPosition
		return a, r.Scan(&a.RoomID, &a.Position)
	})
	if err != nil {
		return nil, fmt.Errorf("reading the rooms %s accepted: %w", dest, err)
	}
	out := make(map[string]int64, len(acked))
	for _, a := range acked {
		out[a.RoomID] = a.Position
	}
	return out, nil
}

// RecordCatchUp implements queue.Store, keeping the latest position per room.
func (s *Store) RecordCatchUp(ctx context.Context, dest string, rooms []queue.CatchUp) error {
	if len(rooms) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	for _, c := range rooms {
		b.Queue(`INSERT INTO sender_catchup (destination, room_id, position, event_id) VALUES ($1, $2, $3, $4)
			ON CONFLICT (destination, room_id) DO UPDATE SET position = EXCLUDED.position, event_id = EXCLUDED.event_id
			WHERE sender_catchup.position < EXCLUDED.position`, dest, c.RoomID, c.Position, c.EventID)
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("recording catch-up of %s: %w", dest, err)
	}
	return nil
}

// CatchUpRooms implements queue.Store; PDUs come from the events table.
func (s *Store) CatchUpRooms(ctx context.Context, dest string, limit int) ([]queue.CatchUp, error) {
	rows, err := s.pool.Query(ctx, `SELECT c.room_id, c.position, c.event_id, COALESCE(e.json, '')
		FROM sender_catchup c LEFT JOIN events e ON e.event_id = c.event_id
		WHERE c.destination = $1 ORDER BY c.position LIMIT $2`, dest, limit)
	if err != nil {
		return nil, fmt.Errorf("reading catch-up of %s: %w", dest, err)
	}
	defer rows.Close()
	var out []queue.CatchUp
	for rows.Next() {
		var c queue.CatchUp
		var pdu string
		if err := rows.Scan(&c.RoomID, &c.Position, &c.EventID, &pdu); err != nil {
			return nil, err
		}
		if pdu != "" {
			c.PDU = json.RawMessage(pdu)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// ClearCatchUp implements queue.Store.
func (s *Store) ClearCatchUp(ctx context.Context, dest string, c queue.CatchUp) error {
	_, err := s.pool.Exec(ctx, "DELETE FROM sender_catchup WHERE destination = $1 AND room_id = $2 AND position = $3", dest, c.RoomID, c.Position)
	if err != nil {
		return fmt.Errorf("clearing catch-up of %s in %s: %w", dest, c.RoomID, err)
	}
	return nil
}

// DueDestinations implements queue.Store.
func (s *Store) DueDestinations(ctx context.Context, now time.Time, after string, limit int) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT w.destination FROM (
			SELECT DISTINCT destination FROM sender_catchup WHERE destination > $2
			UNION SELECT DISTINCT destination FROM sender_to_device WHERE destination > $2
			UNION SELECT DISTINCT destination FROM sender_device_lists WHERE destination > $2) w
		LEFT JOIN sender_destinations d ON d.destination = w.destination
		WHERE COALESCE(d.next_attempt_ms, 0) <= $1 AND NOT COALESCE(d.paused, false)
		ORDER BY w.destination LIMIT $3`, now.UnixMilli(), after, limit)
	if err != nil {
		return nil, fmt.Errorf("listing due destinations: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// StoreToDevice keeps to-device EDUs, each for its destination, until the
// destination accepts it (queue.Store's AckEDUs), in one statement. One the
// destination already acknowledged (a replayed record at or below its
// acknowledged position) or already stored is left out.
func (s *Store) StoreToDevice(ctx context.Context, recs []schema.OutboundRecord) error {
	var dests, ids, contents []string
	var positions []int64
	for _, r := range recs {
		dests, positions, ids, contents = append(dests, r.Destination), append(positions, r.Position), append(ids, r.MessageID), append(contents, string(r.Content))
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO sender_to_device (destination, position, message_id, content)
		SELECT u.d, u.p, u.m, u.c FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) AS u(d, p, m, c)
		WHERE NOT EXISTS (SELECT 1 FROM sender_destinations s WHERE s.destination = u.d AND s.to_device_acked >= u.p)
		ON CONFLICT (destination, position) DO NOTHING`, dests, positions, ids, contents)
	if err != nil {
		return fmt.Errorf("storing %d to-device messages: %w", len(recs), err)
	}
	return nil
}

// StoredEDUs implements queue.Store.
func (s *Store) StoredEDUs(ctx context.Context, dest string, kind queue.Durable, after int64, limit, maxBytes int) ([]queue.StoredEDU, error) {
	if kind == queue.DeviceLists {
		return s.deviceListEDUs(ctx, dest, after, limit, maxBytes)
	}
	rows, err := s.pool.Query(ctx, `SELECT position, content FROM sender_to_device
		WHERE destination = $1 AND position > $2 ORDER BY position LIMIT $3`, dest, after, limit)
	if err != nil {
		return nil, fmt.Errorf("reading to-device messages of %s: %w", dest, err)
	}
	defer rows.Close()
	var out []queue.StoredEDU
	size := 0
	for rows.Next() {
		var pos int64
		var content string
		if err := rows.Scan(&pos, &content); err != nil {
			return nil, err
		}
		if len(out) > 0 && size+len(content) > maxBytes {
			break
		}
		size += len(content)
		out = append(out, queue.StoredEDU{Position: pos, EDU: txn.EDU{Type: edu.TypeDirectToDevice, Content: json.RawMessage(content)}})
	}
	return out, rows.Err()
}

// MarkSending marks dest's stored device-list updates at positions as in a
// transaction being sent, or clears the marks. To-device messages carry no
// chain: they are not marked (a receiver drops one sent again by its
// message_id).
func (s *Store) MarkSending(ctx context.Context, dest string, kind queue.Durable, positions []int64, sending bool) error {
	if kind != queue.DeviceLists {
		return nil
	}
	return s.markDeviceLists(ctx, dest, positions, sending)
}

// AckEDUs implements queue.Store: the EDUs are deleted and the destination's
// acknowledged position raised, in one transaction.
func (s *Store) AckEDUs(ctx context.Context, dest string, kind queue.Durable, positions []int64) error {
	if kind == queue.DeviceLists {
		return s.ackDeviceLists(ctx, dest, positions)
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM sender_to_device WHERE destination = $1 AND position = ANY($2)`, dest, positions); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO sender_destinations (destination, to_device_acked) VALUES ($1, $2)
			ON CONFLICT (destination) DO UPDATE SET to_device_acked = GREATEST(sender_destinations.to_device_acked, EXCLUDED.to_device_acked)`,
			dest, slices.Max(positions))
		return err
	})
	if err != nil {
		return fmt.Errorf("deleting delivered to-device messages of %s: %w", dest, err)
	}
	return nil
}
