package sender

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/schema"
)

// DeviceListCollapseAfter is how long a destination must have been failing
// for its pending device-list updates to be cut to the newest per user (and
// its chains restarted with prev_id []), as Synapse prunes the updates of
// servers that have been down: its storage stays bounded, and the receiver,
// seeing a sequence restart, resyncs the user's devices.
const DeviceListCollapseAfter = 24 * time.Hour

// deviceListKind is a sender_device_lists kind of an EDU type.
func deviceListKind(eduType string) string {
	if eduType == schema.EDUSigningKeyUpdate {
		return "signing_keys"
	}
	return "device"
}

// StoreDeviceLists keeps device-list updates, each for its destination,
// until the destination accepts it or a newer update of the same (user,
// device), or of the user's signing keys, is accepted, in one statement.
// One the destination already acknowledged (a replayed record at or below
// its acknowledged position for the user) is left out.
func (s *Store) StoreDeviceLists(ctx context.Context, recs []schema.OutboundRecord) error {
	var dests, users, kinds, devices, contents []string
	var positions []int64
	for _, r := range recs {
		dests, positions, users = append(dests, r.Destination), append(positions, r.Position), append(users, r.UserID)
		kinds, devices, contents = append(kinds, deviceListKind(r.EDUType)), append(devices, r.DeviceID), append(contents, string(r.Content))
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO sender_device_lists (destination, position, user_id, kind, device_id, content)
		SELECT u.d, u.p, u.u, u.k, u.dev, u.c FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[]) AS u(d, p, u, k, dev, c)
		WHERE NOT EXISTS (SELECT 1 FROM sender_device_list_chain c WHERE c.destination = u.d AND c.user_id = u.u AND c.acked >= u.p)
		ON CONFLICT (destination, position) DO NOTHING`, dests, positions, users, kinds, devices, contents)
	if err != nil {
		return fmt.Errorf("storing %d device-list updates: %w", len(recs), err)
	}
	return nil
}

// deviceListEDUs reads dest's pending device-list updates after position
// after, the newest of each key only, and builds their EDUs: a device
// update's stream_id is its position, and its prev_id the stream_id of the
// user's device update before it that the destination accepted or may have:
// the last one it acknowledged, one left marked as being sent (its sender
// died mid-send), or one earlier in this page ([] when none). A destination
// failing for over DeviceListCollapseAfter is collapsed first.
func (s *Store) deviceListEDUs(ctx context.Context, dest string, after int64, limit, maxBytes int) ([]queue.StoredEDU, error) {
	if err := s.collapseDeviceLists(ctx, dest); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT d.position, d.user_id, d.kind, d.device_id, d.content,
			GREATEST(COALESCE(c.last_stream_id, 0), COALESCE((SELECT max(m.position) FROM sender_device_lists m
				WHERE m.destination = d.destination AND m.user_id = d.user_id AND m.kind = 'device' AND m.sending AND m.position < d.position), 0))
		FROM sender_device_lists d LEFT JOIN sender_device_list_chain c USING (destination, user_id)
		WHERE d.destination = $1 AND d.position > $2 AND NOT EXISTS (
			SELECT 1 FROM sender_device_lists n WHERE n.destination = d.destination AND n.user_id = d.user_id
				AND n.kind = d.kind AND n.device_id = d.device_id AND n.position > d.position)
		ORDER BY d.position LIMIT $3`, dest, after, limit)
	if err != nil {
		return nil, fmt.Errorf("reading device-list updates of %s: %w", dest, err)
	}
	defer rows.Close()
	prev := map[string]int64{}
	var out []queue.StoredEDU
	size := 0
	for rows.Next() {
		var pos, last int64
		var user, kind, device, content string
		if err := rows.Scan(&pos, &user, &kind, &device, &content, &last); err != nil {
			return nil, err
		}
		if len(out) > 0 && size+len(content) > maxBytes {
			break
		}
		size += len(content)
		prev[user] = max(prev[user], last)
		e, err := deviceListEDU(pos, user, kind, device, content, prev[user])
		if err != nil {
			// Stored from a checked record, it fails only if the row was
			// changed by hand: sent as stored, the receiver refuses it as
			// malformed and it is dropped and counted.
			e = txn.EDU{Type: schema.EDUDeviceListUpdate, Content: json.RawMessage(content)}
		}
		if kind == "device" {
			prev[user] = pos
		}
		out = append(out, queue.StoredEDU{Position: pos, EDU: e})
	}
	return out, rows.Err()
}

// deviceListEDU builds a stored update's EDU.
func deviceListEDU(pos int64, user, kind, device, content string, prev int64) (txn.EDU, error) {
	if kind == "signing_keys" {
		return txn.EDU{Type: schema.EDUSigningKeyUpdate, Content: json.RawMessage(content)}, nil
	}
	var fields struct {
		DisplayName string          `json:"device_display_name"`
		Keys        json.RawMessage `json:"keys"`
		Deleted     bool            `json:"deleted"`
	}
	if err := json.Unmarshal([]byte(content), &fields); err != nil {
		return txn.EDU{}, err
	}
	u := edu.DeviceListUpdate{UserID: user, DeviceID: device, DeviceDisplayName: fields.DisplayName, StreamID: pos,
		Deleted: fields.Deleted, Keys: fields.Keys, PrevID: []int64{}}
	if prev > 0 {
		u.PrevID = []int64{prev}
	}
	return u.EDU()
}

// markDeviceLists marks dest's updates at positions as in a transaction
// being sent, or clears the marks (see deviceListEDUs).
func (s *Store) markDeviceLists(ctx context.Context, dest string, positions []int64, sending bool) error {
	if _, err := s.pool.Exec(ctx, `UPDATE sender_device_lists SET sending = $3 WHERE destination = $1 AND position = ANY($2)`, dest, positions, sending); err != nil {
		return fmt.Errorf("marking %d device-list updates of %s: %w", len(positions), dest, err)
	}
	return nil
}

// collapseDeviceLists cuts the pending updates of dest, when it has been
// failing for over DeviceListCollapseAfter and was not collapsed since its
// failures began, to the newest per user (of devices, and of signing keys),
// and restarts its chains: the next update of each user has prev_id [].
func (s *Store) collapseDeviceLists(ctx context.Context, dest string) error {
	cutoff := time.Now().Add(-DeviceListCollapseAfter).UnixMilli()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE sender_destinations SET device_lists_collapsed_at = (extract(epoch FROM clock_timestamp()) * 1000)::bigint
			WHERE destination = $1 AND failure_ts < $2 AND (device_lists_collapsed_at IS NULL OR device_lists_collapsed_at < failure_ts)`, dest, cutoff)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		// The newest per (user, kind), every device's older ones included.
		if _, err := tx.Exec(ctx, `DELETE FROM sender_device_lists d WHERE d.destination = $1 AND EXISTS (
				SELECT 1 FROM sender_device_lists n WHERE n.destination = d.destination AND n.user_id = d.user_id
					AND n.kind = d.kind AND n.position > d.position)`, dest); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE sender_device_list_chain SET last_stream_id = 0 WHERE destination = $1`, dest)
		return err
	})
	if err != nil {
		return fmt.Errorf("collapsing the device-list updates of %s: %w", dest, err)
	}
	return nil
}

// ackDeviceLists forgets dest's delivered updates at positions, with the
// older updates of their keys, and moves each user's chain to the newest
// device update delivered, in one transaction.
func (s *Store) ackDeviceLists(ctx context.Context, dest string, positions []int64) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `WITH acked AS (
				SELECT user_id, kind, device_id, position FROM sender_device_lists WHERE destination = $1 AND position = ANY($2)
			), deleted AS (
				DELETE FROM sender_device_lists d USING acked a WHERE d.destination = $1 AND d.user_id = a.user_id
					AND d.kind = a.kind AND d.device_id = a.device_id AND d.position <= a.position
			)
			INSERT INTO sender_device_list_chain (destination, user_id, last_stream_id, acked)
			SELECT $1, user_id, COALESCE(max(position) FILTER (WHERE kind = 'device'), 0), max(position) FROM acked GROUP BY user_id
			ON CONFLICT (destination, user_id) DO UPDATE SET
				last_stream_id = GREATEST(sender_device_list_chain.last_stream_id, EXCLUDED.last_stream_id),
				acked = GREATEST(sender_device_list_chain.acked, EXCLUDED.acked)`, dest, positions)
		return err
	})
	if err != nil {
		return fmt.Errorf("deleting delivered device-list updates of %s: %w", dest, err)
	}
	return nil
}
