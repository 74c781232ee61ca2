package outbox

import (
	"context"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/fedpipe/fedpipe/schema"
)

// Receipt types a homeserver may hand over. Only m.read is sent over
// federation; m.read.private is accepted and never written.
const (
	ReceiptRead        = "m.read"
	ReceiptReadPrivate = "m.read.private"
)

// Receipt is a local user's read receipt.
type Receipt struct {
	RoomID, Type, UserID string
	EventIDs             []string
	// ThreadID, when set, makes it a threaded receipt.
	ThreadID string
	// TS is when the user read, ms since the epoch.
	TS int64
}

// PutReceipts validates receipts and stores the m.read ones in
// receipts_stream inside tx, returning their stream positions (none for
// private receipts). Users must be of origin (our server name, when set). A
// *ValidationError (field "receipts[i]...") means nothing was written.
func PutReceipts(ctx context.Context, tx pgx.Tx, origin string, receipts []Receipt) ([]int64, error) {
	var keep []Receipt
	for i, r := range receipts {
		field := "receipts[" + strconv.Itoa(i) + "]."
		if err := checkReceipt(field, origin, r); err != nil {
			return nil, err
		}
		if r.Type == ReceiptRead {
			keep = append(keep, r)
		}
	}
	if len(keep) == 0 {
		return []int64{}, nil
	}
	return insertAll(ctx, tx, len(keep), `INSERT INTO receipts_stream (room_id, user_id, event_ids, thread_id, ts) VALUES ($1, $2, $3, $4, $5) RETURNING stream_id`,
		func(i int) []any { r := keep[i]; return []any{r.RoomID, r.UserID, r.EventIDs, r.ThreadID, r.TS} },
		func(i int) string { return "the receipt of " + keep[i].UserID + " in " + keep[i].RoomID })
}

func checkReceipt(field, origin string, r Receipt) error {
	bad := func(f, reason string) error { return &ValidationError{Field: field + f, Reason: reason} }
	if r.Type != ReceiptRead && r.Type != ReceiptReadPrivate {
		return bad("receipt_type", quote(r.Type)+" is not m.read or m.read.private (the only receipts federation carries)")
	}
	if err := checkLocalUser(field+"user_id", r.UserID, origin); err != nil {
		return err
	}
	if r.ThreadID != "" {
		if err := schema.CheckIdentifier("thread_id", r.ThreadID); err != nil {
			return bad("thread_id", err.Error())
		}
	}
	if r.TS <= 0 {
		return bad("ts", "must be a positive time in ms")
	}
	if len(r.EventIDs) == 0 || len(r.EventIDs) > schema.MaxReceiptEventIDs {
		return bad("event_ids", fmt.Sprintf("%d event ids, send 1 to %d", len(r.EventIDs), schema.MaxReceiptEventIDs))
	}
	for j, id := range r.EventIDs {
		if id == "" || id[0] != '$' {
			return bad("event_ids["+strconv.Itoa(j)+"]", quote(id)+" must start with $")
		}
		if err := schema.CheckIdentifier("event_id", id); err != nil {
			return bad("event_ids["+strconv.Itoa(j)+"]", err.Error())
		}
	}
	if r.RoomID == "" || r.RoomID[0] != '!' {
		return bad("room_id", "must start with !")
	}
	if err := schema.CheckIdentifier("room_id", r.RoomID); err != nil {
		return bad("room_id", err.Error())
	}
	return nil
}
