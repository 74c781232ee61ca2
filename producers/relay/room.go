package relay

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/schema"
)

// roomStream is the stream a homeserver writes: events, and with each event
// the rows of current_state_delta_stream at its position. An event becomes a
// room record keyed by room_id, followed by a room record per state delta;
// each delta is also written to the compacted state topic, keyed by
// ["room_id","type","state_key"]. It is always the relay's first stream.
//
// A round's record values and keys are encoded straight from the rows'
// bytes (pgx's RawValues) into a buffer of the round (arena), never through
// strings or a schema.RoomRecord (encode.go). That buffer, the records and
// their headers are allocated for each round and never reused: a produce
// request a writer abandoned (its context done, or its own timeout, then
// retried) may still be reading them.
type roomStream struct {
	room, state Writer
	// rows are the slices read reads a round's rows into, kept from round
	// to round: they point into the round's arena, but nothing of a round
	// refers to them once its records are built.
	rows *roomRows
}

type roomRows struct {
	events []eventRow
	deltas []deltaRow
}

// eventRow is an event's room record, encoded, its key and its position
// header's value (both mostly in the record's bytes: positionAndRoom).
type eventRow struct {
	position        int64
	key, value, pos []byte
}

// deltaRow is a state delta's room record, encoded, its room's key, its
// state record's key and its position header's value.
type deltaRow struct {
	position                  int64
	key, stateKey, value, pos []byte
}

func (roomStream) name() string { return "events" }

// source is events: a state delta is published with its event, never
// without one.
func (roomStream) source() (string, string) { return "events", "stream_ordering" }

func (rs roomStream) read(ctx context.Context, db querier, s span) (batch, error) {
	if rs.rows == nil {
		rs.rows = new(roomRows)
	}
	b, err := rs.readRows(ctx, db, s)
	// Let go of the round's arena: the records refer to it, the rows no more.
	clear(rs.rows.events)
	clear(rs.rows.deltas)
	return b, err
}

func (rs roomStream) readRows(ctx context.Context, db querier, s span) (batch, error) {
	var a arena
	events, err := readEvents(ctx, db, s, &a, rs.rows.events[:0])
	rs.rows.events = events
	if err != nil {
		return batch{}, err
	}
	// Positions with no event (rolled back) are passed over.
	end := s.upto
	if len(events) == s.limit {
		end = events[len(events)-1].position
	}
	deltas, err := readDeltas(ctx, db, s.after, end, &a, rs.rows.deltas[:0])
	rs.rows.deltas = deltas
	if err != nil {
		return batch{}, err
	}
	roomMsgs, stateMsgs, end := roomRecords(s, events, deltas, end)
	return batch{
		writes:    []write{{topic: "room", w: rs.room, msgs: roomMsgs}, {topic: "state", w: rs.state, msgs: stateMsgs}},
		end:       end,
		published: len(roomMsgs),
	}, nil
}

// roomRecords turns events and their deltas (both in position order) into
// room and state records, stopping before the event that would take the
// batch past s.maxBytes or the room records past s.maxRecords (then end is
// the last event's position).
func roomRecords(s span, events []eventRow, deltas []deltaRow, end int64) (roomMsgs, stateMsgs []kafka.Message, _ int64) {
	roomMsgs = make([]kafka.Message, 0, len(events)+len(deltas))
	if len(deltas) > 0 {
		stateMsgs = make([]kafka.Message, 0, len(deltas))
	}
	h := newRecordHeaders(s.instance, len(events)+len(deltas))
	size := 0
	d := 0 // deltas[d:] are those of this event and later ones
	for i := range events {
		ev := &events[i]
		for d < len(deltas) && deltas[d].position < ev.position {
			d++ // a delta without its event: never published, as before
		}
		evDeltas := d
		for evDeltas < len(deltas) && deltas[evDeltas].position == ev.position {
			evDeltas++
		}
		m := kafka.Message{Key: ev.key, Value: ev.value, Headers: h.next(schema.KindEvent, ev.pos)}
		// A generous estimate of the event's records, its deltas included.
		evSize := recordSize(m)
		for _, dr := range deltas[d:evDeltas] {
			evSize += 2*recordSize(m) + len(dr.stateKey)
		}
		if i > 0 && (size+evSize > s.maxBytes || s.maxRecords > 0 && len(roomMsgs)+1+evDeltas-d > s.maxRecords) {
			return roomMsgs, stateMsgs, events[i-1].position
		}
		size += evSize
		roomMsgs = append(roomMsgs, m)
		for ; d < evDeltas; d++ {
			dr := &deltas[d]
			m := kafka.Message{Key: dr.key, Value: dr.value, Headers: h.next(schema.KindStateDelta, dr.pos)}
			roomMsgs = append(roomMsgs, m)
			m.Key = dr.stateKey
			stateMsgs = append(stateMsgs, m)
		}
	}
	return roomMsgs, stateMsgs, end
}

// readEvents appends the events of s to events, their records encoded into a.
func readEvents(ctx context.Context, db querier, s span, a *arena, events []eventRow) ([]eventRow, error) {
	rows, err := db.Query(ctx, `SELECT stream_ordering, event_id, room_id, room_version, sender, origin, type, state_key, json
		FROM events WHERE stream_ordering > $1 AND stream_ordering <= $2 ORDER BY stream_ordering LIMIT $3`, s.after, s.upto, s.limit)
	if err != nil {
		return events, fmt.Errorf("reading events: %w", err)
	}
	defer rows.Close()
	var e eventFields
	for rows.Next() {
		// The row's bytes, valid until the next row.
		v := rows.RawValues()
		if len(v) != 9 {
			return events, fmt.Errorf("reading events: %d columns", len(v))
		}
		if e.position, err = rawInt64(rows, 0, v[0]); err != nil {
			return events, fmt.Errorf("reading events: %w", err)
		}
		e.eventID, e.roomID, e.roomVersion, e.sender, e.origin, e.typ, e.stateKey, e.pdu = v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]
		value, err := appendEvent(a.alloc(e.bound()), &e)
		if err != nil {
			return events, fmt.Errorf("encoding event record at %d: %w", e.position, err)
		}
		value = a.keep(value)
		pos, key := positionAndRoom(value, eventPrefix, e.position, e.roomID)
		if key == nil {
			key = a.keep(append(a.alloc(len(e.roomID)), e.roomID...))
		}
		events = append(events, eventRow{position: e.position, key: key, value: value, pos: pos})
	}
	if err := rows.Err(); err != nil {
		return events, fmt.Errorf("reading events: %w", err)
	}
	return events, nil
}

// readDeltas appends the state deltas after `after` up to upto to deltas,
// in position order, their records and keys encoded into a.
func readDeltas(ctx context.Context, db querier, after, upto int64, a *arena, deltas []deltaRow) ([]deltaRow, error) {
	rows, err := db.Query(ctx, `SELECT stream_id, room_id, type, state_key, event_id, prev_event_id, membership, prev_membership
		FROM current_state_delta_stream WHERE stream_id > $1 AND stream_id <= $2 ORDER BY stream_id, idx`, after, upto)
	if err != nil {
		return deltas, fmt.Errorf("reading state deltas: %w", err)
	}
	defer rows.Close()
	var d deltaFields
	var lastRoom []byte
	for rows.Next() {
		v := rows.RawValues()
		if len(v) != 8 {
			return deltas, fmt.Errorf("reading state deltas: %d columns", len(v))
		}
		if d.position, err = rawInt64(rows, 0, v[0]); err != nil {
			return deltas, fmt.Errorf("reading state deltas: %w", err)
		}
		// NULL (nil) prev_event_id, membership and prev_membership are "".
		d.roomID, d.typ, d.stateKey, d.eventID, d.prevEventID, d.membership, d.prevMembership = v[1], v[2], v[3], v[4], v[5], v[6], v[7]
		value := a.keep(appendDelta(a.alloc(d.bound()), &d))
		stateKey := a.keep(appendStateKey(a.alloc(d.stateKeyBound()), &d))
		pos, key := positionAndRoom(value, deltaPrefix, d.position, d.roomID)
		if key == nil {
			// An event's deltas are mostly of its room: they share a key.
			if !bytes.Equal(lastRoom, d.roomID) {
				lastRoom = a.keep(append(a.alloc(len(d.roomID)), d.roomID...))
			}
			key = lastRoom
		}
		deltas = append(deltas, deltaRow{position: d.position, key: key, stateKey: stateKey, value: value, pos: pos})
	}
	if err := rows.Err(); err != nil {
		return deltas, fmt.Errorf("reading state deltas: %w", err)
	}
	return deltas, nil
}

// rawInt64 decodes column i of the row, a bigint as the server sent it
// (binary, or text with the simple protocol).
func rawInt64(rows pgx.Rows, i int, v []byte) (int64, error) {
	if v == nil {
		return 0, fmt.Errorf("column %d is NULL", i)
	}
	if rows.FieldDescriptions()[i].Format == pgx.BinaryFormatCode {
		if len(v) != 8 {
			return 0, fmt.Errorf("column %d: %d bytes for a bigint", i, len(v))
		}
		return int64(binary.BigEndian.Uint64(v)), nil
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("column %d: %w", i, err)
	}
	return n, nil
}

// recordHeaders hands out the headers of a round's room records (kind,
// schema, position, instance: what span.message gives through
// schema.Headers) from one allocation for the round, the values that do not
// change shared by every record, the position's taken from the record's
// bytes (eventRow). kafka-go only reads them.
type recordHeaders struct {
	list             []kafka.Header
	schema, instance []byte
	kinds            map[string][]byte
}

func newRecordHeaders(instance string, records int) *recordHeaders {
	return &recordHeaders{
		list:     make([]kafka.Header, 0, 4*records),
		schema:   []byte(strconv.Itoa(schema.SchemaVersion)),
		instance: []byte(instance),
		kinds:    map[string][]byte{schema.KindEvent: []byte(schema.KindEvent), schema.KindStateDelta: []byte(schema.KindStateDelta)},
	}
}

// next returns the headers of a record of kind at position (its decimal
// digits).
func (h *recordHeaders) next(kind string, position []byte) []kafka.Header {
	k, ok := h.kinds[kind]
	if !ok {
		k = []byte(kind)
	}
	start := len(h.list)
	h.list = append(h.list,
		kafka.Header{Key: schema.HeaderKind, Value: k},
		kafka.Header{Key: schema.HeaderSchema, Value: h.schema},
		kafka.Header{Key: schema.HeaderPosition, Value: position},
		kafka.Header{Key: schema.HeaderInstance, Value: h.instance})
	return h.list[start:len(h.list):len(h.list)]
}
