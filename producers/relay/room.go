package relay

import (
	"context"
	"fmt"
	"strconv"

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
	// events is the slice read reads a round's events into, kept from round
	// to round: nothing of a round refers to it once its records are built.
	events *[]schema.RoomRecord
}

func (roomStream) name() string { return "events" }

func (rs roomStream) read(ctx context.Context, db querier, s span) (batch, error) {
	if rs.events == nil {
		rs.events = new([]schema.RoomRecord)
	}
	clear(*rs.events) // let go of the last round's strings
	events, err := readEvents(ctx, db, s, (*rs.events)[:0])
	if err != nil {
		return batch{}, err
	}
	*rs.events = events
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
	nDeltas := 0
	for _, ds := range deltas {
		nDeltas += len(ds)
	}
	roomMsgs = make([]kafka.Message, 0, len(events)+nDeltas)
	if nDeltas > 0 {
		stateMsgs = make([]kafka.Message, 0, nDeltas)
	}
	h := newRecordHeaders(s.instance, len(events), len(events)+nDeltas)
	size := 0
	for i := range events {
		ev := &events[i]
		key := []byte(ev.RoomID)
		m, err := roomMessage(key, ev, h.next(schema.KindEvent, ev.Position))
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
			k := key
			if d.RoomID != ev.RoomID {
				k = []byte(d.RoomID)
			}
			m, err := roomMessage(k, &d, h.next(schema.KindStateDelta, d.Position))
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

// readEvents appends the events of s to events.
func readEvents(ctx context.Context, db querier, s span, events []schema.RoomRecord) ([]schema.RoomRecord, error) {
	rows, err := db.Query(ctx, `SELECT stream_ordering, event_id, room_id, room_version, sender, origin, type, state_key, json
		FROM events WHERE stream_ordering > $1 AND stream_ordering <= $2 ORDER BY stream_ordering LIMIT $3`, s.after, s.upto, s.limit)
	if err != nil {
		return nil, fmt.Errorf("reading events: %w", err)
	}
	defer rows.Close()
	dest := make([]any, 9)
	for rows.Next() {
		// Scanned in place: a RoomRecord of its own would escape to the heap
		// for every row.
		events = append(events, schema.RoomRecord{V: schema.SchemaVersion, Kind: schema.KindEvent})
		ev := &events[len(events)-1]
		dest[0], dest[1], dest[2], dest[3], dest[4], dest[5], dest[6], dest[7], dest[8] = &ev.Position, &ev.EventID, &ev.RoomID, &ev.RoomVersion, &ev.Sender, &ev.Origin, &ev.Type, &ev.StateKey, &ev.PDU
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("reading events: %w", err)
		}
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

func roomMessage(key []byte, rec *schema.RoomRecord, headers []kafka.Header) (kafka.Message, error) {
	v, err := rec.Marshal()
	if err != nil {
		return kafka.Message{}, fmt.Errorf("encoding %s record at %d: %w", rec.Kind, rec.Position, err)
	}
	return kafka.Message{Key: key, Value: v, Headers: headers}, nil
}

// recordHeaders hands out the headers of a round's room records (kind,
// schema, position, instance: what span.message gives through
// schema.Headers) from one allocation for the round, the values that do not
// change shared by every record. kafka-go only reads them.
type recordHeaders struct {
	list             []kafka.Header
	positions        []byte
	schema, instance []byte
	kinds            map[string][]byte
	lastPos          int64
	lastPosBytes     []byte
}

func newRecordHeaders(instance string, positions, records int) *recordHeaders {
	return &recordHeaders{
		list:      make([]kafka.Header, 0, 4*records),
		positions: make([]byte, 0, 20*positions),
		schema:    []byte(strconv.Itoa(schema.SchemaVersion)),
		instance:  []byte(instance),
		kinds:     map[string][]byte{schema.KindEvent: []byte(schema.KindEvent), schema.KindStateDelta: []byte(schema.KindStateDelta)},
	}
}

// next returns the headers of a record of kind at position.
func (h *recordHeaders) next(kind string, position int64) []kafka.Header {
	if h.lastPosBytes == nil || position != h.lastPos {
		start := len(h.positions)
		h.positions = strconv.AppendInt(h.positions, position, 10)
		h.lastPos, h.lastPosBytes = position, h.positions[start:len(h.positions):len(h.positions)]
	}
	k, ok := h.kinds[kind]
	if !ok {
		k = []byte(kind)
	}
	start := len(h.list)
	h.list = append(h.list,
		kafka.Header{Key: schema.HeaderKind, Value: k},
		kafka.Header{Key: schema.HeaderSchema, Value: h.schema},
		kafka.Header{Key: schema.HeaderPosition, Value: h.lastPosBytes},
		kafka.Header{Key: schema.HeaderInstance, Value: h.instance})
	return h.list[start:len(h.list):len(h.list)]
}
