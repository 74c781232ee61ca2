// Package edu defines the content of the ephemeral data units fedpipe sends, in
// the federation format of the Matrix server-server specification, and turns
// each into a txn.EDU.
package edu

import (
	"encoding/json"
	"fmt"

	"github.com/fedpipe/fedpipe/federation/txn"
)

// EDU types.
const (
	TypePresence         = "m.presence"
	TypeTyping           = "m.typing"
	TypeReceipt          = "m.receipt"
	TypeDeviceListUpdate = "m.device_list_update"
	TypeDirectToDevice   = "m.direct_to_device"
)

// PresenceUpdate is one user's presence in an m.presence EDU.
type PresenceUpdate struct {
	UserID        string `json:"user_id"`
	Presence      string `json:"presence"` // online, unavailable or offline
	LastActiveAgo int64  `json:"last_active_ago"`
	// CurrentlyActive is sent only for online users, as Synapse does.
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
	UserID            string          `json:"user_id"`
	DeviceID          string          `json:"device_id"`
	DeviceDisplayName string          `json:"device_display_name,omitempty"`
	StreamID          int64           `json:"stream_id"`
	PrevID            []int64         `json:"prev_id,omitempty"`
	Deleted           bool            `json:"deleted,omitempty"`
	Keys              json.RawMessage `json:"keys,omitempty"`
}

// DirectToDevice is the content of an m.direct_to_device EDU: messages by user,
// then by device id (or "*").
type DirectToDevice struct {
	Sender    string                                `json:"sender"`
	Type      string                                `json:"type"`
	MessageID string                                `json:"message_id"`
	Messages  map[string]map[string]json.RawMessage `json:"messages"`
}

// Encode returns the EDU of the given type with content encoded as JSON.
func Encode(eduType string, content any) (txn.EDU, error) {
	raw, err := json.Marshal(content)
	if err != nil {
		return txn.EDU{}, fmt.Errorf("encoding %s content: %w", eduType, err)
	}
	return txn.EDU{Type: eduType, Content: raw}, nil
}

// EDU returns the m.presence EDU.
func (p Presence) EDU() (txn.EDU, error) {
	if p.Push == nil {
		p.Push = []PresenceUpdate{}
	}
	return Encode(TypePresence, p)
}

// EDU returns the m.typing EDU.
func (t Typing) EDU() (txn.EDU, error) { return Encode(TypeTyping, t) }

// EDU returns the m.receipt EDU.
func (r Receipt) EDU() (txn.EDU, error) { return Encode(TypeReceipt, r) }

// EDU returns the m.device_list_update EDU.
func (d DeviceListUpdate) EDU() (txn.EDU, error) { return Encode(TypeDeviceListUpdate, d) }

// EDU returns the m.direct_to_device EDU.
func (d DirectToDevice) EDU() (txn.EDU, error) { return Encode(TypeDirectToDevice, d) }
