package relay

import (
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/fedpipe/fedpipe/schema"
)

// WithReceipts makes the relay publish receipts_stream to <prefix>.receipts
// through w: one receipt record per row, keyed by the room, in the same
// rounds as the events and after them.
func WithReceipts(w Writer) Option {
	return func(r *Relay) { r.added = append(r.added, receiptTable(w)) }
}

func receiptTable(w Writer) tableStream {
	return tableStream{
		stream: "receipts", table: "receipts_stream", position: "stream_id",
		columns: "stream_id, room_id, user_id, event_ids, thread_id, ts",
		kind:    schema.KindReceipt, topic: "receipts", w: w,
		scan: func(rows pgx.Rows) (int64, []byte, []byte, error) {
			rec := schema.ReceiptRecord{V: schema.SchemaVersion, Kind: schema.KindReceipt}
			if err := rows.Scan(&rec.Position, &rec.RoomID, &rec.UserID, &rec.EventIDs, &rec.ThreadID, &rec.TS); err != nil {
				return 0, nil, nil, err
			}
			v, err := rec.Marshal()
			if err != nil {
				return 0, nil, nil, fmt.Errorf("encoding the receipt of %s in %s: %w", rec.UserID, rec.RoomID, err)
			}
			return rec.Position, []byte(rec.RoomID), v, nil
		},
	}
}
