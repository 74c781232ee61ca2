package schema

import (
	"fmt"

	"github.com/segmentio/encoding/json"
)

// KindTyping is the kind of <prefix>.typing records: a local user started or
// stopped typing in a room. Keyed by room_id.
const KindTyping = "typing"

// Typing timeouts: a user typing without a timeout is typing for
// DefaultTypingTimeoutMS; no timeout is longer than MaxTypingTimeoutMS.
const (
	DefaultTypingTimeoutMS = 30_000
	MaxTypingTimeoutMS     = 120_000
)

// TypingRecord is a record of <prefix>.typing.
type TypingRecord struct {
	V      int    `json:"v"`
	Kind   string `json:"kind"`
	RoomID string `json:"room_id"`
	UserID string `json:"user_id"`
	Typing bool   `json:"typing"`
	// TimeoutMS is how long the user is typing from TS unless told
	// otherwise (typing records only; at most MaxTypingTimeoutMS).
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// TS is when the producer made the record (ms since the epoch).
	TS int64 `json:"ts"`
}

// Marshal encodes r.
func (r TypingRecord) Marshal() ([]byte, error) { return json.Marshal(r) }

// DecodeTypingRecord decodes and checks a typing record.
func DecodeTypingRecord(value []byte) (TypingRecord, error) {
	var r TypingRecord
	if err := json.Unmarshal(value, &r); err != nil {
		return r, fmt.Errorf("%w: %v", ErrInvalidRecord, err)
	}
	return r, r.Check()
}

// Check reports why r is not a valid typing record.
func (r TypingRecord) Check() error {
	switch {
	case r.V != SchemaVersion:
		return fmt.Errorf("%w: unsupported version %d", ErrInvalidRecord, r.V)
	case r.Kind != KindTyping:
		return fmt.Errorf("%w: kind %q on the typing topic", ErrInvalidRecord, r.Kind)
	case r.RoomID == "" || r.RoomID[0] != '!':
		return fmt.Errorf("%w: room_id %q", ErrInvalidRecord, r.RoomID)
	case r.UserID == "" || r.UserID[0] != '@':
		return fmt.Errorf("%w: user_id %q", ErrInvalidRecord, r.UserID)
	case r.TimeoutMS < 0 || r.TimeoutMS > MaxTypingTimeoutMS:
		return fmt.Errorf("%w: timeout_ms %d, at most %d", ErrInvalidRecord, r.TimeoutMS, MaxTypingTimeoutMS)
	case r.TS <= 0:
		return fmt.Errorf("%w: typing record without ts", ErrInvalidRecord)
	}
	for _, f := range []struct{ name, value string }{{"room_id", r.RoomID}, {"user_id", r.UserID}} {
		if err := CheckIdentifier(f.name, f.value); err != nil {
			return invalid(err)
		}
	}
	return nil
}
