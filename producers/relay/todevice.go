package relay

import (
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/fedpipe/fedpipe/schema"
)

// WithToDevice makes the relay publish device_federation_outbox to
// <prefix>.todevice through w: one to_device record per row (one EDU for one
// destination), keyed by the destination, in the same rounds as the events
// and after them.
func WithToDevice(w Writer) Option {
	return func(r *Relay) { r.added = append(r.added, toDeviceTable(w)) }
}

func toDeviceTable(w Writer) tableStream {
	return tableStream{
		stream: "todevice", table: "device_federation_outbox", position: "stream_id",
		columns: "stream_id, destination, message_id, content",
		kind:    schema.KindToDevice, topic: "todevice", w: w,
		scan: func(rows pgx.Rows) (int64, []byte, []byte, error) {
			rec := schema.OutboundRecord{V: schema.SchemaVersion, Kind: schema.KindToDevice}
			var content string
			if err := rows.Scan(&rec.Position, &rec.Destination, &rec.MessageID, &content); err != nil {
				return 0, nil, nil, err
			}
			rec.Content = json.RawMessage(content)
			v, err := rec.Marshal()
			if err != nil {
				return 0, nil, nil, fmt.Errorf("encoding to-device message %s for %s: %w", rec.MessageID, rec.Destination, err)
			}
			return rec.Position, []byte(rec.Destination), v, nil
		},
	}
}
