package outbox

import (
	"strconv"
	"unicode/utf8"

	"github.com/segmentio/encoding/json"

	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/schema"
)

// MaxPDUBytes is the specification's limit on a PDU's size.
const MaxPDUBytes = 65536

// maxIDBytes is the specification's limit on identifiers, types and state keys.
const maxIDBytes = 255

// KnownRoomVersion reports whether fedpipe forwards events of room version v.
func KnownRoomVersion(v string) bool {
	n, err := strconv.Atoi(v)
	return err == nil && n >= 1 && n <= 12 && strconv.Itoa(n) == v
}

// Memberships are the values of an m.room.member event's membership.
var memberships = map[string]bool{"join": true, "leave": true, "invite": true, "ban": true, "knock": true}

// Validate checks an event against the identifier grammar of the
// specification's appendix, the PDU size limit, and its own PDU: fields the PDU
// carries must agree with the event's.
func Validate(ev *EventWithDeltas) error {
	bad := func(field, reason string) error { return &ValidationError{Field: field, Reason: reason} }
	if !KnownRoomVersion(ev.RoomVersion) {
		return bad("room_version", "unknown room version "+quote(ev.RoomVersion))
	}
	if err := idError("event_id", mxid.CheckEventID(ev.EventID, ev.RoomVersion)); err != nil {
		return err
	}
	if err := idError("room_id", mxid.CheckRoomID(ev.RoomID, ev.RoomVersion)); err != nil {
		return err
	}
	if err := idError("sender", mxid.CheckUserID(ev.Sender)); err != nil {
		return err
	}
	if ev.Type == "" || len(ev.Type) > maxIDBytes {
		return bad("type", "must be 1 to 255 bytes")
	}
	if err := schema.CheckIdentifier("type", ev.Type); err != nil {
		return bad("type", err.Error())
	}
	if ev.StateKey != nil {
		if err := schema.CheckText("state_key", *ev.StateKey, maxIDBytes); err != nil {
			return bad("state_key", err.Error())
		}
	}
	if err := checkPDU(ev); err != nil {
		return err
	}
	for i, d := range ev.Deltas {
		field := "state_deltas[" + strconv.Itoa(i) + "]."
		switch {
		case d.RoomID != "" && d.RoomID != ev.RoomID:
			return bad(field+"room_id", quote(d.RoomID)+" is not the event's room")
		case d.Type == "" || len(d.Type) > maxIDBytes:
			return bad(field+"type", "must be 1 to 255 bytes")
		case len(d.StateKey) > maxIDBytes:
			return bad(field+"state_key", "longer than 255 bytes")
		case d.Type != "m.room.member" && (d.Membership != "" || d.PrevMembership != ""):
			return bad(field+"membership", "only m.room.member deltas carry memberships")
		case d.Membership != "" && !memberships[d.Membership]:
			return bad(field+"membership", "unknown membership "+quote(d.Membership))
		case d.PrevMembership != "" && !memberships[d.PrevMembership]:
			return bad(field+"prev_membership", "unknown membership "+quote(d.PrevMembership))
		}
		if err := schema.CheckIdentifier(field+"type", d.Type); err != nil {
			return bad(field+"type", err.Error())
		}
		if err := schema.CheckText(field+"state_key", d.StateKey, maxIDBytes); err != nil {
			return bad(field+"state_key", err.Error())
		}
		if d.Type == "m.room.member" {
			if err := idError(field+"state_key", mxid.CheckUserID(d.StateKey)); err != nil {
				return err
			}
		}
		if d.EventID != "" {
			if err := idError(field+"event_id", mxid.CheckEventID(d.EventID, ev.RoomVersion)); err != nil {
				return err
			}
		}
		if d.PrevEventID != "" {
			if err := idError(field+"prev_event_id", mxid.CheckEventID(d.PrevEventID, ev.RoomVersion)); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkPDU checks the PDU is a JSON object within the size limit whose
// room_id, sender, type, state_key and origin (those present) agree with ev.
func checkPDU(ev *EventWithDeltas) error {
	if len(ev.PDU) > MaxPDUBytes {
		return &ValidationError{"pdu", "larger than 65536 bytes"}
	}
	if !utf8.Valid(ev.PDU) {
		return &ValidationError{"pdu", "not valid UTF-8"} // PostgreSQL's text refuses it
	}
	var p struct {
		RoomID   *string `json:"room_id"`
		Sender   *string `json:"sender"`
		Type     *string `json:"type"`
		StateKey *string `json:"state_key"`
		Origin   *string `json:"origin"`
	}
	if len(ev.PDU) == 0 || ev.PDU[0] != '{' {
		return &ValidationError{"pdu", "not a JSON object"}
	}
	if err := json.Unmarshal(ev.PDU, &p); err != nil {
		return &ValidationError{"pdu", "not a JSON object: " + err.Error()}
	}
	agree := func(field string, inPDU *string, want string) error {
		if inPDU != nil && *inPDU != want {
			return &ValidationError{"pdu." + field, quote(*inPDU) + " differs from the event's " + quote(want)}
		}
		return nil
	}
	if err := agree("room_id", p.RoomID, ev.RoomID); err != nil {
		return err
	}
	if err := agree("sender", p.Sender, ev.Sender); err != nil {
		return err
	}
	if err := agree("type", p.Type, ev.Type); err != nil {
		return err
	}
	if err := agree("origin", p.Origin, mxid.ServerPart(ev.Sender)); err != nil {
		return err
	}
	switch {
	case ev.StateKey == nil && p.StateKey != nil:
		return &ValidationError{"pdu.state_key", "present, but the event is not a state event"}
	case ev.StateKey != nil:
		return agree("state_key", p.StateKey, *ev.StateKey)
	}
	return nil
}

// idError is a ValidationError on field when an identifier check failed.
func idError(field string, err error) error {
	if err == nil {
		return nil
	}
	return &ValidationError{Field: field, Reason: err.Error()}
}

func quote(s string) string { b, _ := json.Marshal(s); return string(b) }
