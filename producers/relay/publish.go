package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/schema"
)

// publish reads up to BatchSize events after pos (and not after upto) with their
// deltas, writes them, and stores the new position. It returns the position and
// the number of room records written.
func (r *Relay) publish(ctx context.Context, pos, upto int64) (int64, int, error) {
	rows, err := r.pool.Query(ctx, `SELECT stream_ordering, event_id, room_id, room_version, sender, origin, type, state_key, json
		FROM events WHERE stream_ordering > $1 AND stream_ordering <= $2 ORDER BY stream_ordering LIMIT $3`, pos, upto, r.cfg.BatchSize)
	if err != nil {
		return pos, 0, fmt.Errorf("reading events: %w", err)
	}
	var events []schema.RoomRecord
	for rows.Next() {
		ev := schema.RoomRecord{V: schema.SchemaVersion, Kind: schema.KindEvent}
		var pdu string
		if err := rows.Scan(&ev.Position, &ev.EventID, &ev.RoomID, &ev.RoomVersion, &ev.Sender, &ev.Origin, &ev.Type, &ev.StateKey, &pdu); err != nil {
			rows.Close()
			return pos, 0, fmt.Errorf("reading events: %w", err)
		}
		ev.PDU = json.RawMessage(pdu)
		events = append(events, ev)
	}
	if err := rows.Err(); err != nil {
		return pos, 0, fmt.Errorf("reading events: %w", err)
	}
	// Positions with no event (rolled back) are passed over.
	end := upto
	if len(events) == r.cfg.BatchSize {
		end = events[len(events)-1].Position
	}
	deltas, err := r.readDeltas(ctx, pos, end)
	if err != nil {
		return pos, 0, err
	}
	var roomMsgs, stateMsgs []kafka.Message
	size := 0
	for i, ev := range events {
		m, err := r.message([]byte(ev.RoomID), ev)
		if err != nil {
			return pos, 0, err
		}
		// Keep a round within MaxRoundBytes, so that each partition's records
		// of the round form one record batch, which Kafka writes atomically: a
		// failed write then never leaves a room's later record on the topic
		// without its earlier one, and the retried round keeps room order.
		evSize := recordSize(m)
		for _, d := range deltas[ev.Position] {
			evSize += 2*recordSize(m) + len(*d.StateKey) // a generous estimate of the delta records
		}
		if i > 0 && size+evSize > r.cfg.MaxRoundBytes {
			end = events[i-1].Position
			break
		}
		size += evSize
		roomMsgs = append(roomMsgs, m)
		for _, d := range deltas[ev.Position] {
			m, err := r.message([]byte(d.RoomID), d)
			if err != nil {
				return pos, 0, err
			}
			roomMsgs = append(roomMsgs, m)
			sm := m
			sm.Key = schema.StateKey(d.RoomID, d.Type, *d.StateKey)
			stateMsgs = append(stateMsgs, sm)
		}
	}
	if len(roomMsgs) > 0 {
		if err := r.write(ctx, r.room, "room", roomMsgs); err != nil {
			return pos, 0, fmt.Errorf("publishing %d room records: %w", len(roomMsgs), err)
		}
	}
	if len(stateMsgs) > 0 {
		if err := r.write(ctx, r.state, "state", stateMsgs); err != nil {
			return pos, 0, fmt.Errorf("publishing %d state records: %w", len(stateMsgs), err)
		}
	}
	if _, err := r.pool.Exec(ctx, `INSERT INTO relay_positions (stream, position) VALUES ($1, $2)
		ON CONFLICT (stream) DO UPDATE SET position = EXCLUDED.position`, streamName, end); err != nil {
		return pos, 0, fmt.Errorf("storing relay position %d: %w", end, err)
	}
	return end, len(roomMsgs), nil
}

// recordSize approximates a record's size in a batch: key, value and headers.
func recordSize(m kafka.Message) int {
	n := len(m.Key) + len(m.Value) + 32
	for _, h := range m.Headers {
		n += len(h.Key) + len(h.Value) + 8
	}
	return n
}

func (r *Relay) readDeltas(ctx context.Context, after, upto int64) (map[int64][]schema.RoomRecord, error) {
	rows, err := r.pool.Query(ctx, `SELECT stream_id, room_id, type, state_key, event_id, COALESCE(prev_event_id, ''), COALESCE(membership, ''), COALESCE(prev_membership, '')
		FROM current_state_delta_stream WHERE stream_id > $1 AND stream_id <= $2 ORDER BY stream_id, idx`, after, upto)
	if err != nil {
		return nil, fmt.Errorf("reading state deltas: %w", err)
	}
	defer rows.Close()
	out := map[int64][]schema.RoomRecord{}
	for rows.Next() {
		d := schema.RoomRecord{V: schema.SchemaVersion, Kind: schema.KindStateDelta}
		var sk string
		if err := rows.Scan(&d.Position, &d.RoomID, &d.Type, &sk, &d.EventID, &d.PrevEventID, &d.Membership, &d.PrevMembership); err != nil {
			return nil, fmt.Errorf("reading state deltas: %w", err)
		}
		d.StateKey = &sk
		out[d.Position] = append(out[d.Position], d)
	}
	return out, rows.Err()
}

func (r *Relay) message(key []byte, rec schema.RoomRecord) (kafka.Message, error) {
	v, err := rec.Marshal()
	if err != nil {
		return kafka.Message{}, fmt.Errorf("encoding %s record at %d: %w", rec.Kind, rec.Position, err)
	}
	return kafka.Message{Key: key, Value: v, Headers: []kafka.Header{
		{Key: schema.HeaderKind, Value: []byte(rec.Kind)},
		{Key: schema.HeaderSchema, Value: []byte(strconv.Itoa(schema.SchemaVersion))},
		{Key: schema.HeaderPosition, Value: []byte(strconv.FormatInt(rec.Position, 10))},
		{Key: schema.HeaderInstance, Value: []byte(r.cfg.Instance)},
	}}, nil
}
