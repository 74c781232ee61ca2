package presence

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	fedpresence "github.com/fedpipe/fedpipe/federation/presence"
)

// The presence stage's PostgreSQL state (schema/migrations/0004_presence.sql).
// Every change of a user's state happens with the user's presence_state row
// locked, so the records of a user handled by different members (each
// instance's records go to one partition) and the timers of any member apply
// one at a time.

// lockUsers creates missing rows and locks the users' rows in user id order (a
// fixed order: two transactions locking overlapping sets cannot deadlock). It
// returns each user's state and whether they sync on any instance, as seen
// after the lock.
func lockUsers(ctx context.Context, tx pgx.Tx, users []string) (map[string]fedpresence.State, map[string]bool, error) {
	if _, err := tx.Exec(ctx, `INSERT INTO presence_state (user_id, state) SELECT unnest($1::text[]), 'offline' ON CONFLICT DO NOTHING`, users); err != nil {
		return nil, nil, fmt.Errorf("creating presence of %d users: %w", len(users), err)
	}
	rows, err := tx.Query(ctx, `SELECT `+stateColumns+`
		FROM presence_state WHERE user_id = ANY($1) ORDER BY user_id FOR UPDATE`, users)
	if err != nil {
		return nil, nil, fmt.Errorf("locking presence of %d users: %w", len(users), err)
	}
	states, err := scanStates(rows)
	if err != nil {
		return nil, nil, fmt.Errorf("locking presence of %d users: %w", len(users), err)
	}
	syncing, err := syncingOf(ctx, tx, users)
	return states, syncing, err
}

const stateColumns = `user_id, state, status_msg, last_active_ts, last_user_sync_ts, last_federation_update_ts, currently_active`

// lockDue locks up to limit users whose timers are due at now, passing over
// users another transaction holds.
func lockDue(ctx context.Context, tx pgx.Tx, now int64, limit int) (map[string]fedpresence.State, error) {
	rows, err := tx.Query(ctx, `SELECT `+stateColumns+`
		FROM presence_state WHERE next_check_ms <= $1 ORDER BY next_check_ms LIMIT $2 FOR UPDATE SKIP LOCKED`, now, limit)
	if err != nil {
		return nil, err
	}
	return scanStates(rows)
}

func scanStates(rows pgx.Rows) (map[string]fedpresence.State, error) {
	defer rows.Close()
	states := map[string]fedpresence.State{}
	for rows.Next() {
		var s fedpresence.State
		if err := rows.Scan(&s.UserID, &s.Presence, &s.StatusMsg, &s.LastActiveTS, &s.LastUserSyncTS, &s.LastFederationUpdateTS, &s.CurrentlyActive); err != nil {
			return nil, err
		}
		states[s.UserID] = s
	}
	return states, rows.Err()
}

// syncingOf says which of users sync on some instance. A read-committed
// statement after the row locks sees every sync change committed before them.
func syncingOf(ctx context.Context, tx pgx.Tx, users []string) (map[string]bool, error) {
	rows, err := tx.Query(ctx, `SELECT DISTINCT user_id FROM presence_syncing WHERE user_id = ANY($1)`, users)
	if err != nil {
		return nil, fmt.Errorf("reading who syncs: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("reading who syncs: %w", err)
	}
	out := make(map[string]bool, len(ids))
	for _, id := range ids {
		out[id] = true
	}
	return out, nil
}

// syncInstances says on which instances each of users syncs.
func syncInstances(ctx context.Context, tx pgx.Tx, users []string) (map[string]map[string]bool, error) {
	rows, err := tx.Query(ctx, `SELECT user_id, instance FROM presence_syncing WHERE user_id = ANY($1)`, users)
	if err != nil {
		return nil, fmt.Errorf("reading who syncs where: %w", err)
	}
	defer rows.Close()
	out := map[string]map[string]bool{}
	for rows.Next() {
		var u, inst string
		if err := rows.Scan(&u, &inst); err != nil {
			return nil, fmt.Errorf("reading who syncs where: %w", err)
		}
		if out[u] == nil {
			out[u] = map[string]bool{}
		}
		out[u][inst] = true
	}
	return out, rows.Err()
}

// recordInstances records that the instances were seen at now: those in
// register become known, those in touch only stay alive if known (see
// instancesAndUsers).
func recordInstances(ctx context.Context, tx pgx.Tx, register, touch map[string]bool, now int64) error {
	b := &pgx.Batch{}
	for inst := range register {
		b.Queue(`INSERT INTO presence_instances (instance, last_seen_ms) VALUES ($1, $2)
			ON CONFLICT (instance) DO UPDATE SET last_seen_ms = GREATEST(presence_instances.last_seen_ms, EXCLUDED.last_seen_ms)`, inst, now)
	}
	for inst := range touch {
		if !register[inst] {
			b.Queue(`UPDATE presence_instances SET last_seen_ms = GREATEST(last_seen_ms, $2) WHERE instance = $1`, inst, now)
		}
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("recording instances: %w", err)
	}
	return nil
}

// queueSync queues on b that user started or stopped syncing on instance.
func queueSync(b *pgx.Batch, instance, user string, syncing bool) {
	if syncing {
		b.Queue(`INSERT INTO presence_syncing (instance, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, instance, user)
	} else {
		b.Queue(`DELETE FROM presence_syncing WHERE instance = $1 AND user_id = $2`, instance, user)
	}
}

// clearInstance forgets an instance and every sync on it, and returns the
// users who synced there.
func clearInstance(ctx context.Context, tx pgx.Tx, instance string) ([]string, error) {
	if _, err := tx.Exec(ctx, `DELETE FROM presence_instances WHERE instance = $1`, instance); err != nil {
		return nil, fmt.Errorf("clearing instance %s: %w", instance, err)
	}
	rows, err := tx.Query(ctx, `DELETE FROM presence_syncing WHERE instance = $1 RETURNING user_id`, instance)
	if err != nil {
		return nil, fmt.Errorf("clearing instance %s: %w", instance, err)
	}
	users, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("clearing instance %s: %w", instance, err)
	}
	return users, nil
}

// lockSilentInstance locks an instance last seen before before, passing over
// instances another transaction holds; pgx.ErrNoRows when there is none.
func lockSilentInstance(ctx context.Context, tx pgx.Tx, before int64) (string, error) {
	var instance string
	err := tx.QueryRow(ctx, `SELECT instance FROM presence_instances WHERE last_seen_ms < $1 LIMIT 1 FOR UPDATE SKIP LOCKED`, before).Scan(&instance)
	return instance, err
}

// save stores a user's new state with its next timer and, when remote servers
// should be told, replaces the user's presence_stream row with one at a new
// stream position (the relay publishes it).
func save(ctx context.Context, tx pgx.Tx, s fedpresence.State, nextCheck int64, tell bool) error {
	b := &pgx.Batch{}
	queueSave(b, s, nextCheck, tell)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("storing presence of %s: %w", s.UserID, err)
	}
	return nil
}

// queueSave queues save's statements on b, so that many users' states are
// stored in one round trip.
func queueSave(b *pgx.Batch, s fedpresence.State, nextCheck int64, tell bool) {
	var next *int64
	if nextCheck > 0 {
		next = &nextCheck
	}
	b.Queue(`UPDATE presence_state SET state = $2, status_msg = $3, last_active_ts = $4, last_user_sync_ts = $5,
		last_federation_update_ts = $6, currently_active = $7, next_check_ms = $8 WHERE user_id = $1`,
		s.UserID, s.Presence, s.StatusMsg, s.LastActiveTS, s.LastUserSyncTS, s.LastFederationUpdateTS, s.CurrentlyActive, next)
	if tell {
		b.Queue(`INSERT INTO presence_stream (stream_id, user_id, state, status_msg, last_active_ts, currently_active)
			VALUES (fedpipe_next_stream_ordering(), $1, $2, $3, $4, $5)
			ON CONFLICT (user_id) DO UPDATE SET stream_id = EXCLUDED.stream_id, state = EXCLUDED.state, status_msg = EXCLUDED.status_msg,
				last_active_ts = EXCLUDED.last_active_ts, currently_active = EXCLUDED.currently_active`,
			s.UserID, s.Presence, s.StatusMsg, s.LastActiveTS, s.CurrentlyActive)
	}
}

// errNoRow guards against a locked user without a row, which lockUsers rules out.
var errNoRow = errors.New("presence row missing after insert")
