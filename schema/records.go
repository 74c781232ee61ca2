package schema

import (
	"errors"
	"fmt"

	"github.com/segmentio/encoding/json"
)

// SchemaVersion is the "v" of every record and the "schema" header.
const SchemaVersion = 1

// Record kinds.
const (
	KindEvent      = "event"
	KindStateDelta = "state_delta"
	KindPDU        = "pdu"
	KindEDU        = "edu"
	// KindToDevice is the kind of <prefix>.todevice records and of the
	// outbound records the router makes of them: one m.direct_to_device EDU
	// for one destination, durable until the destination acknowledges it.
	KindToDevice = "to_device"
)

// Header names on every record.
const (
	HeaderKind     = "kind"
	HeaderSchema   = "schema"
	HeaderPosition = "position"
	HeaderInstance = "instance"
)

// ErrInvalidRecord is wrapped by every decoding error: the record can never be
// handled and belongs in the dead-letter topic.
var ErrInvalidRecord = errors.New("invalid record")

// DefaultPrefix is the topic prefix when none is configured (kafka.topic_prefix):
// topics are fedpipe.room, fedpipe.outbound, ...
const DefaultPrefix = "fedpipe"

// Topic is the name of a stream's topic under prefix.
func Topic(prefix, stream string) string { return prefix + "." + stream }

// RoomRecord is a record of <prefix>.room: an event or a state delta of a room.
type RoomRecord struct {
	V    int    `json:"v"`
	Kind string `json:"kind"`
	// Position is the stream position (events.stream_ordering).
	Position int64  `json:"position"`
	RoomID   string `json:"room_id"`
	// Event fields.
	RoomVersion string          `json:"room_version,omitempty"`
	EventID     string          `json:"event_id"`
	Sender      string          `json:"sender,omitempty"`
	Origin      string          `json:"origin,omitempty"`
	Type        string          `json:"type"`
	StateKey    *string         `json:"state_key,omitempty"`
	PDU         json.RawMessage `json:"pdu,omitempty"`
	// State delta fields (StateKey, Type and EventID are shared).
	PrevEventID    string `json:"prev_event_id,omitempty"`
	Membership     string `json:"membership,omitempty"`
	PrevMembership string `json:"prev_membership,omitempty"`
}

// DecodeRoomRecord decodes and checks a room record.
func DecodeRoomRecord(value []byte) (RoomRecord, error) {
	var r RoomRecord
	if err := json.Unmarshal(value, &r); err != nil {
		return r, fmt.Errorf("%w: %v", ErrInvalidRecord, err)
	}
	if r.V != SchemaVersion {
		return r, fmt.Errorf("%w: unsupported version %d", ErrInvalidRecord, r.V)
	}
	missing := func(field string) (RoomRecord, error) {
		return r, fmt.Errorf("%w: %s record without %s", ErrInvalidRecord, r.Kind, field)
	}
	if r.RoomID == "" {
		return missing("room_id")
	}
	if r.Position <= 0 {
		return missing("a positive position")
	}
	if err := r.checkText(); err != nil {
		return r, err
	}
	switch r.Kind {
	case KindEvent:
		switch {
		case r.EventID == "":
			return missing("event_id")
		case r.Origin == "":
			return missing("origin")
		case r.Type == "":
			return missing("type")
		case len(r.PDU) == 0 || r.PDU[0] != '{':
			return missing("a pdu object")
		case r.RoomVersion == "":
			return missing("room_version")
		}
	case KindStateDelta:
		if r.Type == "" || r.StateKey == nil {
			return missing("type and state_key")
		}
	default:
		return r, fmt.Errorf("%w: unknown kind %q", ErrInvalidRecord, r.Kind)
	}
	return r, nil
}

// checkText checks the record's identifiers (CheckIdentifier) and state key
// (CheckText: any character but NUL, at most MaxIdentifierBytes).
func (r RoomRecord) checkText() error {
	for _, f := range []struct{ name, value string }{
		{"room_id", r.RoomID}, {"room_version", r.RoomVersion}, {"event_id", r.EventID}, {"sender", r.Sender}, {"origin", r.Origin},
		{"type", r.Type}, {"prev_event_id", r.PrevEventID}, {"membership", r.Membership}, {"prev_membership", r.PrevMembership},
	} {
		if err := CheckIdentifier(f.name, f.value); err != nil {
			return invalid(err)
		}
	}
	if r.StateKey != nil {
		return invalid(CheckText("state_key", *r.StateKey, MaxIdentifierBytes))
	}
	return nil
}

// StateKey is the key of a fedpipe.state record: the JSON array
// ["room_id","type","state_key"], so that compaction keeps the current entry of
// every state key (a room_id key would keep only each room's last change).
func StateKey(roomID, typ, stateKey string) []byte {
	b, _ := json.Marshal([]string{roomID, typ, stateKey}) // strings always encode
	return b
}

// OutboundRecord is a record of <prefix>.outbound: one PDU or EDU for one
// destination, or one PDU for several destinations of one partition.
type OutboundRecord struct {
	V           int    `json:"v"`
	Kind        string `json:"kind"`
	Destination string `json:"destination"`
	// Destinations, optional on a pdu record, are every destination the PDU
	// goes to in this record, Destination (the key) first: the router writes
	// one record per (event, outbound partition) rather than per
	// destination, so a PDU's bytes cross the broker once per partition. All
	// of them must be in the record's partition (the key's), which the
	// sender checks. Without it the record is for Destination alone.
	Destinations []string        `json:"destinations,omitempty"`
	RoomID       string          `json:"room_id,omitempty"`
	EventID      string          `json:"event_id,omitempty"`
	Position     int64           `json:"position,omitempty"`
	RoomVersion  string          `json:"room_version,omitempty"`
	PDU          json.RawMessage `json:"pdu,omitempty"`
	EDUType      string          `json:"edu_type,omitempty"`
	Content      json.RawMessage `json:"content,omitempty"`
	// EDUKey, optional, is the coalescing key of a keyed EDU (typing: its
	// room and user): of the EDUs of one type and key waiting for a
	// destination only the latest is sent. The router sets it, so the sender
	// never reads EDU content.
	EDUKey string `json:"edu_key,omitempty"`
	// Presence holds the states of a presence record (kind "presence"): local
	// users' presence for this destination, at most one state per user.
	Presence []PresenceState `json:"presence,omitempty"`
	// MessageID is a to_device record's message_id (also in its content),
	// which the receiver deduplicates by.
	MessageID string `json:"message_id,omitempty"`
	// UserID and DeviceID are a device_list record's user and device (none
	// for signing keys).
	UserID   string `json:"user_id,omitempty"`
	DeviceID string `json:"device_id,omitempty"`
	// Receipts holds a receipt record's receipts for this destination (one
	// per room, user and thread).
	Receipts []Receipt `json:"receipts,omitempty"`
}

// DecodeOutboundRecord decodes and checks an outbound record.
func DecodeOutboundRecord(value []byte) (OutboundRecord, error) {
	var r OutboundRecord
	if err := json.Unmarshal(value, &r); err != nil {
		return r, fmt.Errorf("%w: %v", ErrInvalidRecord, err)
	}
	if r.V != SchemaVersion {
		return r, fmt.Errorf("%w: unsupported version %d", ErrInvalidRecord, r.V)
	}
	if r.Destination == "" {
		return r, fmt.Errorf("%w: outbound record without destination", ErrInvalidRecord)
	}
	for _, f := range []struct{ name, value string }{
		{"destination", r.Destination}, {"room_id", r.RoomID}, {"event_id", r.EventID}, {"room_version", r.RoomVersion}, {"edu_type", r.EDUType}, {"message_id", r.MessageID},
	} {
		if err := CheckIdentifier(f.name, f.value); err != nil {
			return r, invalid(err)
		}
	}
	if err := r.checkDestinations(); err != nil {
		return r, err
	}
	switch r.Kind {
	case KindPDU:
		if r.EventID == "" || r.RoomID == "" || len(r.PDU) == 0 || r.PDU[0] != '{' || r.Position <= 0 {
			return r, fmt.Errorf("%w: pdu record needs event_id, room_id, position and a pdu object", ErrInvalidRecord)
		}
	case KindEDU:
		if r.EDUType == "" || len(r.Content) == 0 || r.Content[0] != '{' {
			return r, fmt.Errorf("%w: edu record needs edu_type and a content object", ErrInvalidRecord)
		}
	case KindToDevice:
		if r.MessageID == "" || r.Position <= 0 || len(r.Content) == 0 || r.Content[0] != '{' {
			return r, fmt.Errorf("%w: to_device record needs message_id, position and a content object", ErrInvalidRecord)
		}
		if len(r.Content) > MaxEDUBytes {
			return r, fmt.Errorf("%w: to_device content of %d bytes, at most %d", ErrInvalidRecord, len(r.Content), MaxEDUBytes)
		}
	case KindReceipt:
		if len(r.Receipts) == 0 {
			return r, fmt.Errorf("%w: receipt record without receipts", ErrInvalidRecord)
		}
		for _, rc := range r.Receipts {
			if err := rc.Check(); err != nil {
				return r, err
			}
		}
	case KindDeviceList:
		if err := checkDeviceList(r.Position, r.UserID, r.DeviceID, r.EDUType, r.Content); err != nil {
			return r, err
		}
	case KindPresence:
		if len(r.Presence) == 0 {
			return r, fmt.Errorf("%w: presence record without states", ErrInvalidRecord)
		}
		for _, s := range r.Presence {
			if err := checkPresenceState(s); err != nil {
				return r, err
			}
		}
	default:
		return r, fmt.Errorf("%w: unknown kind %q", ErrInvalidRecord, r.Kind)
	}
	return r, nil
}

// Targets are the destinations an outbound record is for: Destinations, or
// Destination alone.
func (r OutboundRecord) Targets() []string {
	if len(r.Destinations) > 0 {
		return r.Destinations
	}
	return []string{r.Destination}
}

// checkDestinations checks a record's Destinations: on pdu records only,
// Destination first, each a valid identifier, none twice, at most
// MaxRecordDestinations.
func (r OutboundRecord) checkDestinations() error {
	if len(r.Destinations) == 0 {
		return nil
	}
	switch {
	case r.Kind != KindPDU:
		return fmt.Errorf("%w: a %s record with destinations (only pdu records list several)", ErrInvalidRecord, r.Kind)
	case len(r.Destinations) > MaxRecordDestinations:
		return fmt.Errorf("%w: pdu record with %d destinations, at most %d", ErrInvalidRecord, len(r.Destinations), MaxRecordDestinations)
	case r.Destinations[0] != r.Destination:
		return fmt.Errorf("%w: pdu record whose destinations do not start with its destination %q", ErrInvalidRecord, r.Destination)
	}
	seen := make(map[string]bool, len(r.Destinations))
	for _, d := range r.Destinations {
		if d == "" || seen[d] {
			return fmt.Errorf("%w: pdu record with an empty or repeated destination %q", ErrInvalidRecord, d)
		}
		if err := CheckIdentifier("destinations", d); err != nil {
			return invalid(err)
		}
		seen[d] = true
	}
	return nil
}
