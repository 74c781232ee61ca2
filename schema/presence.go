package schema

import (
	"fmt"

	"github.com/segmentio/encoding/json"

	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/federation/presence"
)

// Record kinds of <prefix>.usersync, the presence input. Every record is keyed
// by the instance id of the sync worker that produced it.
const (
	// KindUserSync: a user started ("syncing":true) or stopped syncing on the
	// instance. Producers send it on a user's first concurrent sync and after
	// its last one, not for every request.
	KindUserSync = "user_sync"
	// KindUserActive: the user did something (sent an event, or synced asking
	// to be online): last_active moves to ts and an idle user is online again.
	KindUserActive = "user_active"
	// KindSetPresence: the user set their presence and status message.
	KindSetPresence = "set_presence"
	// KindInstanceClear: the instance shut down cleanly; its users stop syncing
	// there at once.
	KindInstanceClear = "instance_clear"
	// KindInstanceAlive: the instance is alive. An instance that sends nothing
	// for presence.instance_timeout is taken to have vanished: as if cleared.
	KindInstanceAlive = "instance_alive"
	// KindPresence is the kind of <prefix>.presence records and of outbound
	// presence records.
	KindPresence = "presence"
)

// UserSyncRecord is a record of <prefix>.usersync.
type UserSyncRecord struct {
	V        int    `json:"v"`
	Kind     string `json:"kind"`
	Instance string `json:"instance"`
	UserID   string `json:"user_id,omitempty"`
	// Syncing is set on user_sync records only.
	Syncing *bool `json:"syncing,omitempty"`
	// Presence and StatusMsg are set on set_presence records; a missing or
	// null status_msg clears it.
	Presence  string  `json:"presence,omitempty"`
	StatusMsg *string `json:"status_msg,omitempty"`
	// TS is when the producer made the record (ms since the epoch).
	TS int64 `json:"ts"`
}

// DecodeUserSyncRecord decodes and checks a usersync record.
func DecodeUserSyncRecord(value []byte) (UserSyncRecord, error) {
	var r UserSyncRecord
	if err := json.Unmarshal(value, &r); err != nil {
		return r, fmt.Errorf("%w: %v", ErrInvalidRecord, err)
	}
	if r.V != SchemaVersion {
		return r, fmt.Errorf("%w: unsupported version %d", ErrInvalidRecord, r.V)
	}
	if r.Instance == "" {
		return r, fmt.Errorf("%w: %s record without instance", ErrInvalidRecord, r.Kind)
	}
	if err := CheckIdentifier("instance", r.Instance); err != nil {
		return r, invalid(err)
	}
	if r.StatusMsg != nil {
		if err := CheckText("status_msg", *r.StatusMsg, MaxStatusMsgBytes); err != nil {
			return r, invalid(err)
		}
	}
	needUser := func() error {
		if !mxid.LooksLikeUserID(r.UserID) {
			return fmt.Errorf("%w: %s record needs a user_id like @user:server, got %q", ErrInvalidRecord, r.Kind, r.UserID)
		}
		return invalid(CheckIdentifier("user_id", r.UserID))
	}
	switch r.Kind {
	case KindUserSync:
		if err := needUser(); err != nil {
			return r, err
		}
		if r.Syncing == nil {
			return r, fmt.Errorf("%w: user_sync record without syncing", ErrInvalidRecord)
		}
	case KindUserActive:
		if err := needUser(); err != nil {
			return r, err
		}
	case KindSetPresence:
		if err := needUser(); err != nil {
			return r, err
		}
		if !presence.Valid(r.Presence) {
			return r, fmt.Errorf("%w: set_presence record with presence %q (online, unavailable or offline)", ErrInvalidRecord, r.Presence)
		}
	case KindInstanceClear, KindInstanceAlive:
	default:
		return r, fmt.Errorf("%w: unknown kind %q", ErrInvalidRecord, r.Kind)
	}
	return r, nil
}

// PresenceState is a local user's presence as the records carry it: the one
// presence state type, federation/presence's, whose JSON form is the records'.
type PresenceState = presence.State

// PresenceRecord is a record of <prefix>.presence (key user_id): a presence
// change that remote servers should be told, published from presence_stream.
type PresenceRecord struct {
	V        int    `json:"v"`
	Kind     string `json:"kind"`
	Position int64  `json:"position"`
	PresenceState
}

// DecodePresenceRecord decodes and checks a presence record.
func DecodePresenceRecord(value []byte) (PresenceRecord, error) {
	var r PresenceRecord
	if err := json.Unmarshal(value, &r); err != nil {
		return r, fmt.Errorf("%w: %v", ErrInvalidRecord, err)
	}
	if r.V != SchemaVersion {
		return r, fmt.Errorf("%w: unsupported version %d", ErrInvalidRecord, r.V)
	}
	if r.Kind != KindPresence {
		return r, fmt.Errorf("%w: unknown kind %q", ErrInvalidRecord, r.Kind)
	}
	if r.Position <= 0 {
		return r, fmt.Errorf("%w: presence record without a positive position", ErrInvalidRecord)
	}
	if err := checkPresenceState(r.PresenceState); err != nil {
		return r, err
	}
	return r, nil
}

// checkPresenceState checks a state's identifier and text fields, as every
// record's, then the state itself (presence.State.Check). A status message is
// checked for NUL and UTF-8 but not for MaxStatusMsgBytes: that cap applies
// where input enters (usersync records, the ingest API), so states stored
// before it still route (the router splits outbound presence records by
// bytes).
func checkPresenceState(s PresenceState) error {
	if !mxid.LooksLikeUserID(s.UserID) {
		return fmt.Errorf("%w: presence state with user_id %q", ErrInvalidRecord, s.UserID)
	}
	if err := CheckIdentifier("user_id", s.UserID); err != nil {
		return invalid(err)
	}
	if s.StatusMsg != nil {
		if err := checkChars("status_msg of "+s.UserID, *s.StatusMsg, false); err != nil {
			return invalid(err)
		}
	}
	return invalid(s.Check())
}

// Marshal encodes the record (without HTML escaping, like every record).
func (r UserSyncRecord) Marshal() ([]byte, error) { return spliceRaw(r, "", nil) }

// Marshal encodes the record (without HTML escaping, like every record).
func (r PresenceRecord) Marshal() ([]byte, error) { return spliceRaw(r, "", nil) }
