package relay

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/schema"
)

// roomStream is the stream a homeserver writes: events, and with each event
// the rows of current_state_delta_stream at its position. An event becomes a
// room record keyed by room_id, followed by a room record per state delta;
// each delta is also written to the compacted state topic, keyed by
// ["room_id","type","state_key"]. It is always the relay's first stream.
type roomStream struct {
	room, state Writer
}

func (roomStream) name() string { return "events" }

func (rs roomStream) read(ctx context.Context, db querier, s span) (batch, error) {
	events, err := readEvents(ctx, db, s)
	if err != nil {
		return batch{}, err
	}
	// Positions with no event (rolled back) are passed over.
	end := s.upto
	if len(events) == s.limit {
		end = events[len(events)-1].Position
	}
	deltas, err := readDeltas(ctx, db, s.after, end)
	if err != nil {
		return batch{}, err
	}
	roomMsgs, stateMsgs, end, err := roomRecords(s, events, deltas, end)
	if err != nil {
		return batch{}, err
	}
	return batch{
		writes:    []write{{topic: "room", w: rs.room, msgs: roomMsgs}, {topic: "state", w: rs.state, msgs: stateMsgs}},
		end:       end,
		published: len(roomMsgs),
	}, nil
}

// roomRecords turns events and their deltas into room and state records,
// stopping before the event that would take the batch past s.maxBytes or the
// room records past s.maxRecords (then end is the last event's position).
func roomRecords(s span, events []schema.RoomRecord, deltas map[int64][]schema.RoomRecord, end int64) (roomMsgs, stateMsgs []kafka.Message, _ int64, _ error) {
	size := 0
	for i, ev := range events {
		m, err := roomMessage(s, []byte(ev.RoomID), ev)
		if err != nil {
			return nil, nil, 0, err
		}
		// A generous estimate of the event's records, its deltas included.
		evSize := recordSize(m)
		for _, d := range deltas[ev.Position] {
			evSize += 2*recordSize(m) + len(*d.StateKey)
		}
		if i > 0 && (size+evSize > s.maxBytes || s.maxRecords > 0 && len(roomMsgs)+1+len(deltas[ev.Position]) > s.maxRecords) {
			return roomMsgs, stateMsgs, events[i-1].Position, nil
		}
		size += evSize
		roomMsgs = append(roomMsgs, m)
		for _, d := range deltas[ev.Position] {
			m, err := roomMessage(s, []byte(d.RoomID), d)
			if err != nil {
				return nil, nil, 0, err
			}
			roomMsgs = append(roomMsgs, m)
			sm := m
			sm.Key = schema.StateKey(d.RoomID, d.Type, *d.StateKey)
			stateMsgs = append(stateMsgs, sm)
		}
	}
	return roomMsgs, stateMsgs, end, nil
}

func readEvents(ctx context.Context, db querier, s span) ([]schema.RoomRecord, error) {
	rows, err := db.Query(ctx, `SELECT stream_ordering, event_id, room_id, room_version, sender, origin, type, state_key, json
		FROM events WHERE stream_ordering > $1 AND stream_ordering <= $2 ORDER BY stream_ordering LIMIT $3`, s.after, s.upto, s.limit)
	if err != nil {
		return nil, fmt.Errorf("reading events: %w", err)
	}
	defer rows.Close()
	var events []schema.RoomRecord
	for rows.Next() {
		ev := schema.RoomRecord{V: schema.SchemaVersion, Kind: schema.KindEvent}
		var pdu string
		if err := rows.Scan(&ev.Position, &ev.EventID, &ev.RoomID, &ev.RoomVersion, &ev.Sender, &ev.Origin, &ev.Type, &ev.StateKey, &pdu); err != nil {
			return nil, fmt.Errorf("reading events: %w", err)
		}
		ev.PDU = json.RawMessage(pdu)
		events = append(events, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading events: %w", err)
	}
	return events, nil
}

func readDeltas(ctx context.Context, db querier, after, upto int64) (map[int64][]schema.RoomRecord, error) {
	rows, err := db.Query(ctx, `SELECT stream_id, room_id, type, state_key, event_id, COALESCE(prev_event_id, ''), COALESCE(membership, ''), COALESCE(prev_membership, '')
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
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading state deltas: %w", err)
	}
	return out, nil
}

func roomMessage(s span, key []byte, rec schema.RoomRecord) (kafka.Message, error) {
	v, err := rec.Marshal()
	if err != nil {
		return kafka.Message{}, fmt.Errorf("encoding %s record at %d: %w", rec.Kind, rec.Position, err)
	}
	return s.message(rec.Kind, rec.Position, key, v), nil
}
