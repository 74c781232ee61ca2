// Package edu defines the content of the ephemeral data units fedpipe sends, in
// the federation format of the Matrix server-server specification, and turns
// each into a txn.EDU.
package edu

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/fedpipe/fedpipe/federation/presence"
	"github.com/fedpipe/fedpipe/federation/txn"
)

// EDU types.
const (
	TypePresence         = "m.presence"
	TypeTyping           = "m.typing"
	TypeReceipt          = "m.receipt"
	TypeDeviceListUpdate = "m.device_list_update"
	TypeDirectToDevice   = "m.direct_to_device"
	TypeSigningKeyUpdate = "m.signing_key_update"
)

// PresenceUpdate is one user's presence in an m.presence EDU.
type PresenceUpdate struct {
	UserID        string `json:"user_id"`
	Presence      string `json:"presence"` // online, unavailable or offline
	LastActiveAgo int64  `json:"last_active_ago"`
	// CurrentlyActive is sent only for online users, as Synapse does;
	// Presence.EDU drops it for others.
	CurrentlyActive *bool `json:"currently_active,omitempty"`
	// StatusMsg is sent only when set.
	StatusMsg *string `json:"status_msg,omitempty"`
}

// Presence is the content of an m.presence EDU.
type Presence struct {
	Push []PresenceUpdate `json:"push"`
}

// Typing is the content of an m.typing EDU.
type Typing struct {
	RoomID string `json:"room_id"`
	UserID string `json:"user_id"`
	Typing bool   `json:"typing"`
}

// ReceiptData is the data of one user's read receipt.
type ReceiptData struct {
	TS       int64  `json:"ts"`
	ThreadID string `json:"thread_id,omitempty"`
}

// UserReceipt is one user's receipt in a room.
type UserReceipt struct {
	EventIDs []string    `json:"event_ids"`
	Data     ReceiptData `json:"data"`
}

// RoomReceipts holds a room's m.read receipts by user.
type RoomReceipts struct {
	Read map[string]UserReceipt `json:"m.read"`
}

// Receipt is the content of an m.receipt EDU: receipts by room.
type Receipt map[string]RoomReceipts

// DeviceListUpdate is the content of an m.device_list_update EDU.
type DeviceListUpdate struct {
	UserID            string `json:"user_id"`
	DeviceID          string `json:"device_id"`
	DeviceDisplayName string `json:"device_display_name,omitempty"`
	StreamID          int64  `json:"stream_id"`
	// PrevID is always sent, [] for the first update of a sequence (or after
	// a gap the receiver must resync over).
	PrevID  []int64         `json:"prev_id"`
	Deleted bool            `json:"deleted,omitempty"`
	Keys    json.RawMessage `json:"keys,omitempty"`
}

// DirectToDevice is the content of an m.direct_to_device EDU: messages by user,
// then by device id (or "*").
type DirectToDevice struct {
	Sender    string                                `json:"sender"`
	Type      string                                `json:"type"`
	MessageID string                                `json:"message_id"`
	Messages  map[string]map[string]json.RawMessage `json:"messages"`
}

// ErrInvalid is wrapped by the EDU methods when content lacks a field the
// specification requires or holds a value it does not allow.
var ErrInvalid = errors.New("invalid EDU content")

// Presence states (federation/presence's).
const (
	Online      = presence.Online
	Unavailable = presence.Unavailable
	Offline     = presence.Offline
)

// NewPresenceUpdate builds a user's presence update the way Synapse formats it
// for federation: currently_active only for online users, status_msg only
// when set.
func NewPresenceUpdate(userID, presence string, lastActiveAgo int64, currentlyActive bool, statusMsg string) PresenceUpdate {
	u := PresenceUpdate{UserID: userID, Presence: presence, LastActiveAgo: lastActiveAgo}
	if presence == Online {
		u.CurrentlyActive = &currentlyActive
	}
	if statusMsg != "" {
		u.StatusMsg = &statusMsg
	}
	return u
}

// PresenceUpdateAt renders s for a transaction built at now. The queue keeps
// states with their absolute last-active time until it builds a transaction,
// so that last_active_ago is measured when the destination is actually sent
// to, not when the state was learned (a slow destination must not get a stale
// age). A last-active time in the future (the clocks of the presence writer
// and the sender differ) is sent as zero: the specification's field is an
// elapsed time.
func PresenceUpdateAt(s presence.State, now time.Time) PresenceUpdate {
	ago := max(now.UnixMilli()-s.LastActiveTS, 0)
	return NewPresenceUpdate(s.UserID, s.Presence, ago, s.CurrentlyActive, s.Status())
}

// Encode returns the EDU of the given type with content encoded as JSON.
func Encode(eduType string, content any) (txn.EDU, error) {
	raw, err := json.Marshal(content)
	if err != nil {
		return txn.EDU{}, fmt.Errorf("encoding %s content: %w", eduType, err)
	}
	return txn.EDU{Type: eduType, Content: raw}, nil
}

func invalid(eduType, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalid, eduType, fmt.Sprintf(format, args...))
}

// EDU returns the m.presence EDU. Updates are normalized as NewPresenceUpdate
// builds them (the caller's slice is not changed).
func (p Presence) EDU() (txn.EDU, error) {
	push := make([]PresenceUpdate, 0, len(p.Push))
	for i, u := range p.Push {
		if u.UserID == "" {
			return txn.EDU{}, invalid(TypePresence, "update %d has no user_id", i)
		}
		if !presence.Valid(u.Presence) {
			return txn.EDU{}, invalid(TypePresence, "update %d (%s): presence %q is not online, unavailable or offline", i, u.UserID, u.Presence)
		}
		if u.LastActiveAgo < 0 {
			return txn.EDU{}, invalid(TypePresence, "update %d (%s): negative last_active_ago", i, u.UserID)
		}
		if u.Presence != Online {
			u.CurrentlyActive = nil
		}
		if u.StatusMsg != nil && *u.StatusMsg == "" {
			u.StatusMsg = nil
		}
		push = append(push, u)
	}
	return Encode(TypePresence, Presence{Push: push})
}

// EDU returns the m.typing EDU.
func (t Typing) EDU() (txn.EDU, error) {
	if t.RoomID == "" || t.UserID == "" {
		return txn.EDU{}, invalid(TypeTyping, "room_id and user_id are required (got %q, %q)", t.RoomID, t.UserID)
	}
	return Encode(TypeTyping, t)
}

// EDU returns the m.receipt EDU.
func (r Receipt) EDU() (txn.EDU, error) {
	if len(r) == 0 {
		return txn.EDU{}, invalid(TypeReceipt, "no rooms")
	}
	for room, rr := range r {
		if len(rr.Read) == 0 {
			return txn.EDU{}, invalid(TypeReceipt, "room %s has no m.read receipts", room)
		}
		for user, ur := range rr.Read {
			if len(ur.EventIDs) == 0 {
				return txn.EDU{}, invalid(TypeReceipt, "receipt of %s in %s has no event_ids", user, room)
			}
		}
	}
	return Encode(TypeReceipt, r)
}

// EDU returns the m.device_list_update EDU.
func (d DeviceListUpdate) EDU() (txn.EDU, error) {
	if d.UserID == "" || d.DeviceID == "" {
		return txn.EDU{}, invalid(TypeDeviceListUpdate, "user_id and device_id are required (got %q, %q)", d.UserID, d.DeviceID)
	}
	if len(d.Keys) > 0 {
		var keys map[string]json.RawMessage
		if err := json.Unmarshal(d.Keys, &keys); err != nil || keys == nil {
			return txn.EDU{}, invalid(TypeDeviceListUpdate, "keys of %s %s are not a JSON object", d.UserID, d.DeviceID)
		}
	}
	if d.PrevID == nil {
		d.PrevID = []int64{}
	}
	return Encode(TypeDeviceListUpdate, d)
}

// SigningKeyUpdate is the content of an m.signing_key_update EDU: a user's
// new cross-signing keys (at least one of them).
type SigningKeyUpdate struct {
	UserID         string          `json:"user_id"`
	MasterKey      json.RawMessage `json:"master_key,omitempty"`
	SelfSigningKey json.RawMessage `json:"self_signing_key,omitempty"`
}

// EDU returns the m.signing_key_update EDU.
func (s SigningKeyUpdate) EDU() (txn.EDU, error) {
	if s.UserID == "" || len(s.MasterKey) == 0 && len(s.SelfSigningKey) == 0 {
		return txn.EDU{}, invalid(TypeSigningKeyUpdate, "user_id and a master or self-signing key are required")
	}
	for _, k := range []json.RawMessage{s.MasterKey, s.SelfSigningKey} {
		var m map[string]json.RawMessage
		if len(k) > 0 && (json.Unmarshal(k, &m) != nil || m == nil) {
			return txn.EDU{}, invalid(TypeSigningKeyUpdate, "a key of %s is not a JSON object", s.UserID)
		}
	}
	return Encode(TypeSigningKeyUpdate, s)
}

// EDU returns the m.direct_to_device EDU.
func (d DirectToDevice) EDU() (txn.EDU, error) {
	if d.Sender == "" || d.Type == "" || d.MessageID == "" {
		return txn.EDU{}, invalid(TypeDirectToDevice, "sender, type and message_id are required (got %q, %q, %q)", d.Sender, d.Type, d.MessageID)
	}
	if len(d.Messages) == 0 {
		return txn.EDU{}, invalid(TypeDirectToDevice, "message %s has no messages", d.MessageID)
	}
	for user, devices := range d.Messages {
		for dev, msg := range devices {
			var m map[string]json.RawMessage
			if err := json.Unmarshal(msg, &m); err != nil || m == nil {
				return txn.EDU{}, invalid(TypeDirectToDevice, "message for %s device %s is not a JSON object", user, dev)
			}
		}
	}
	return Encode(TypeDirectToDevice, d)
}
