package relay

import (
	"errors"
	"strconv"
	"unicode/utf8"

	"github.com/segmentio/encoding/json"

	"github.com/fedpipe/fedpipe/schema"
)

// The room stream's records are encoded here, straight from the bytes of a
// database row into a round's buffer, rather than through a
// schema.RoomRecord's strings and RoomRecord.Marshal. The bytes must be
// exactly the ones Marshal produces (consumers decode them; the schema
// package's tests pin them), which encode_test.go checks against it on
// random and hostile rows.

// eventFields are the columns of an events row, as the database sent them.
type eventFields struct {
	position                                     int64
	eventID, roomID, roomVersion, sender, origin []byte
	typ                                          []byte
	stateKey                                     []byte // nil when NULL
	pdu                                          []byte
}

// deltaFields are the columns of a current_state_delta_stream row (NULL
// text columns as empty).
type deltaFields struct {
	position                                int64
	roomID, typ, stateKey, eventID          []byte
	prevEventID, membership, prevMembership []byte
}

var (
	errPDUNotJSON = errors.New("pdu is not valid JSON")
	// eventPrefix and deltaPrefix begin every record of their kind, the
	// position's digits and `,"room_id":` next: see positionAndRoom.
	eventPrefix = `{"v":` + strconv.Itoa(schema.SchemaVersion) + `,"kind":"` + schema.KindEvent + `","position":`
	deltaPrefix = `{"v":` + strconv.Itoa(schema.SchemaVersion) + `,"kind":"` + schema.KindStateDelta + `","position":`
)

// positionAndRoom returns the position's digits and the room ID in value, a
// record appendEvent or appendDelta (whose prefix is given) encoded for
// roomID at position, so that the record's position header and key need no
// bytes of their own: the room ID is its own bytes when it needs no escaping
// (nil when it does).
func positionAndRoom(value []byte, prefix string, position int64, roomID []byte) (pos, room []byte) {
	n := len(prefix) + digits(position)
	pos = value[len(prefix):n:n]
	n += len(`,"room_id":"`)
	for _, c := range roomID {
		if c < 0x20 || c >= 0x80 || c == '"' || c == '\\' {
			return pos, nil
		}
	}
	return pos, value[n : n+len(roomID) : n+len(roomID)]
}

// digits is how many bytes strconv.AppendInt(b, n, 10) appends.
func digits(n int64) int {
	d, u := 1, uint64(n)
	if n < 0 {
		d, u = 2, -u
	}
	for u >= 10 {
		u /= 10
		d++
	}
	return d
}

// eventBound is at most the bytes appendEvent appends for e.
func (e *eventFields) bound() int {
	return 160 + len(e.pdu) + 6*(len(e.eventID)+len(e.roomID)+len(e.roomVersion)+len(e.sender)+len(e.origin)+len(e.typ)+len(e.stateKey))
}

// appendEvent appends e's room record (kind event): the bytes of
// schema.RoomRecord.Marshal.
func appendEvent(b []byte, e *eventFields) ([]byte, error) {
	b = append(b, eventPrefix...)
	b = strconv.AppendInt(b, e.position, 10)
	b = appendField(b, `,"room_id":`, e.roomID)
	if len(e.roomVersion) > 0 {
		b = appendField(b, `,"room_version":`, e.roomVersion)
	}
	b = appendField(b, `,"event_id":`, e.eventID)
	if len(e.sender) > 0 {
		b = appendField(b, `,"sender":`, e.sender)
	}
	if len(e.origin) > 0 {
		b = appendField(b, `,"origin":`, e.origin)
	}
	b = appendField(b, `,"type":`, e.typ)
	if e.stateKey != nil {
		b = appendField(b, `,"state_key":`, e.stateKey)
	}
	if len(e.pdu) > 0 {
		if !json.Valid(e.pdu) {
			return b, errPDUNotJSON
		}
		b = append(b, `,"pdu":`...)
		b = append(b, e.pdu...)
	}
	return append(b, '}'), nil
}

// bound is at most the bytes appendDelta appends for d.
func (d *deltaFields) bound() int {
	return 200 + 6*(len(d.roomID)+len(d.typ)+len(d.stateKey)+len(d.eventID)+len(d.prevEventID)+len(d.membership)+len(d.prevMembership))
}

// appendDelta appends d's room record (kind state_delta): the bytes of
// schema.RoomRecord.Marshal, "membership":"" last for a removed member.
func appendDelta(b []byte, d *deltaFields) []byte {
	b = append(b, deltaPrefix...)
	b = strconv.AppendInt(b, d.position, 10)
	b = appendField(b, `,"room_id":`, d.roomID)
	b = appendField(b, `,"event_id":`, d.eventID)
	b = appendField(b, `,"type":`, d.typ)
	b = appendField(b, `,"state_key":`, d.stateKey)
	if len(d.prevEventID) > 0 {
		b = appendField(b, `,"prev_event_id":`, d.prevEventID)
	}
	if len(d.membership) > 0 {
		b = appendField(b, `,"membership":`, d.membership)
	}
	if len(d.prevMembership) > 0 {
		b = appendField(b, `,"prev_membership":`, d.prevMembership)
	}
	if len(d.membership) == 0 && string(d.typ) == "m.room.member" {
		b = append(b, `,"membership":""`...)
	}
	return append(b, '}')
}

// appendStateKey appends the key of d's state record: the bytes of
// schema.StateKey (json.Marshal of a []string, which escapes HTML).
func appendStateKey(b []byte, d *deltaFields) []byte {
	b = append(b, '[')
	b = appendString(b, d.roomID, true)
	b = append(b, ',')
	b = appendString(b, d.typ, true)
	b = append(b, ',')
	b = appendString(b, d.stateKey, true)
	return append(b, ']')
}

// stateKeyBound is at most the bytes appendStateKey appends for d.
func (d *deltaFields) stateKeyBound() int {
	return 10 + 6*(len(d.roomID)+len(d.typ)+len(d.stateKey))
}

func appendField(b []byte, name string, s []byte) []byte {
	return appendString(append(b, name...), s, false)
}

const hex = "0123456789abcdef"

// appendString appends s as a JSON string, escaped as
// github.com/segmentio/encoding/json escapes a string (its encodeString):
// HTML characters only when escapeHTML (json.Marshal; json.Append without the
// EscapeHTML flag, as schema's Marshal methods call it, leaves them), control
// characters as \b \f \n \r \t or \u00XX, invalid UTF-8 as \ufffd, U+2028
// and U+2029 as \u2028 and \u2029, DEL and every other character as is.
func appendString(b []byte, s []byte, escapeHTML bool) []byte {
	b = append(b, '"')
	i := 0
	for j := 0; j < len(s); {
		c := s[j]
		if c >= 0x20 && c <= 0x7f && c != '\\' && c != '"' && (!escapeHTML || (c != '<' && c != '>' && c != '&')) {
			j++
			continue
		}
		switch c {
		case '\\', '"':
			b = append(append(b, s[i:j]...), '\\', c)
			j++
			i = j
			continue
		case '\b':
			b = append(append(b, s[i:j]...), '\\', 'b')
			j++
			i = j
			continue
		case '\f':
			b = append(append(b, s[i:j]...), '\\', 'f')
			j++
			i = j
			continue
		case '\n':
			b = append(append(b, s[i:j]...), '\\', 'n')
			j++
			i = j
			continue
		case '\r':
			b = append(append(b, s[i:j]...), '\\', 'r')
			j++
			i = j
			continue
		case '\t':
			b = append(append(b, s[i:j]...), '\\', 't')
			j++
			i = j
			continue
		}
		if c < 0x80 { // below 0x20, or an HTML character when escapeHTML
			b = append(append(b, s[i:j]...), '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			j++
			i = j
			continue
		}
		r, size := utf8.DecodeRune(s[j:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(append(b, s[i:j]...), `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(append(b, s[i:j]...), '\\', 'u', '2', '0', '2', hex[r&0xF])
		default:
			j += size
			continue
		}
		j += size
		i = j
	}
	b = append(b, s[i:]...)
	return append(b, '"')
}
