package schema

import (
	"fmt"

	"github.com/segmentio/encoding/json"
)

// KindReceipt is the kind of <prefix>.receipts records and of outbound
// receipt records: local users' read receipts (m.read; private receipts are
// never sent over federation and never written).
const KindReceipt = "receipt"

// MaxReceiptEventIDs bounds the event ids of one receipt.
const MaxReceiptEventIDs = 10

// Receipt is one user's m.read receipt in a room.
type Receipt struct {
	RoomID   string   `json:"room_id"`
	UserID   string   `json:"user_id"`
	EventIDs []string `json:"event_ids"`
	// ThreadID, when set, makes it a threaded receipt ("main" for the main
	// timeline).
	ThreadID string `json:"thread_id,omitempty"`
	// TS is when the user read, ms since the epoch.
	TS int64 `json:"ts"`
}

// Check reports why r cannot be sent.
func (r Receipt) Check() error {
	switch {
	case r.RoomID == "" || r.RoomID[0] != '!':
		return fmt.Errorf("%w: receipt's room_id %q", ErrInvalidRecord, r.RoomID)
	case r.UserID == "" || r.UserID[0] != '@':
		return fmt.Errorf("%w: receipt's user_id %q", ErrInvalidRecord, r.UserID)
	case len(r.EventIDs) == 0 || len(r.EventIDs) > MaxReceiptEventIDs:
		return fmt.Errorf("%w: receipt with %d event ids, 1 to %d", ErrInvalidRecord, len(r.EventIDs), MaxReceiptEventIDs)
	case r.TS <= 0:
		return fmt.Errorf("%w: receipt without ts", ErrInvalidRecord)
	}
	fields := []struct{ name, value string }{{"room_id", r.RoomID}, {"user_id", r.UserID}, {"thread_id", r.ThreadID}}
	for _, id := range r.EventIDs {
		if id == "" || id[0] != '$' {
			return fmt.Errorf("%w: receipt's event id %q", ErrInvalidRecord, id)
		}
		fields = append(fields, struct{ name, value string }{"event_ids", id})
	}
	for _, f := range fields {
		if err := CheckIdentifier(f.name, f.value); err != nil {
			return invalid(err)
		}
	}
	return nil
}

// ReceiptRecord is a record of <prefix>.receipts, keyed by room_id.
type ReceiptRecord struct {
	V        int    `json:"v"`
	Kind     string `json:"kind"`
	Position int64  `json:"position"`
	Receipt
}

// Marshal encodes r.
func (r ReceiptRecord) Marshal() ([]byte, error) { return json.Marshal(r) }

// DecodeReceiptRecord decodes and checks a receipt record.
func DecodeReceiptRecord(value []byte) (ReceiptRecord, error) {
	var r ReceiptRecord
	if err := json.Unmarshal(value, &r); err != nil {
		return r, fmt.Errorf("%w: %v", ErrInvalidRecord, err)
	}
	if r.V != SchemaVersion || r.Kind != KindReceipt || r.Position <= 0 {
		return r, fmt.Errorf("%w: version %d kind %q position %d on the receipts topic", ErrInvalidRecord, r.V, r.Kind, r.Position)
	}
	return r, r.Receipt.Check()
}
