package schema

import (
	"fmt"
	"unicode/utf8"
)

// Limits on the text of records. Identifiers follow Synapse's event checks
// (synapse/event_auth.py: sender, room_id, event_id, type and state_key at most
// 255 bytes; MAX_USERID_LENGTH 255). Synapse sets no limit on a status message;
// fedpipe caps it so that a presence EDU of 50 users stays below Synapse's
// SOFT_MAX_EDU_SIZE of 64 KiB (50 × (1 KiB + the state's other fields)) and a
// record can never approach Kafka's 1 MiB message limit.
const (
	// MaxIdentifierBytes bounds user, room and event ids, server names,
	// event types, state keys and instance names.
	MaxIdentifierBytes = 255
	// MaxStatusMsgBytes bounds a presence status message (UTF-8 bytes).
	MaxStatusMsgBytes = 1024
	// MaxEDUBytes bounds one EDU fedpipe builds (Synapse's SOFT_MAX_EDU_SIZE,
	// 64 KiB): a to-device message's recipients are split into EDUs below it.
	MaxEDUBytes = 65536
	// MaxRecordDestinations bounds the destinations one outbound pdu record
	// lists: at most 255 bytes each, they take under 256 KiB, so a record
	// with a PDU (at most 64 KiB) stays far below Kafka's 1 MiB message limit.
	MaxRecordDestinations = 1000
)

// CheckText reports why s cannot be a text field of a record: longer than
// maxBytes, not UTF-8, or holding a NUL, which PostgreSQL's text type refuses
// (SQLSTATE 22021), so a record carrying one could never be stored.
func CheckText(field, s string, maxBytes int) error {
	if len(s) > maxBytes {
		return fmt.Errorf("%s: %d bytes, at most %d", field, len(s), maxBytes)
	}
	return checkChars(field, s, false)
}

// CheckIdentifier is CheckText with MaxIdentifierBytes that also refuses the
// control characters (U+0000–U+001F, U+007F), which no Matrix identifier has.
func CheckIdentifier(field, s string) error {
	if len(s) > MaxIdentifierBytes {
		return fmt.Errorf("%s: %d bytes, at most %d", field, len(s), MaxIdentifierBytes)
	}
	return checkChars(field, s, true)
}

func checkChars(field, s string, noControl bool) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s: not valid UTF-8", field)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == 0:
			return fmt.Errorf("%s: holds a NUL byte at %d", field, i)
		case noControl && (c < 0x20 || c == 0x7f):
			return fmt.Errorf("%s: holds the control character %U at %d", field, rune(c), i)
		}
	}
	return nil
}

// invalid wraps a check's error as ErrInvalidRecord.
func invalid(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalidRecord, err)
}
