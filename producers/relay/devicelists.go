package relay

import (
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/fedpipe/fedpipe/schema"
)

// WithDeviceLists makes the relay publish device_lists_stream to
// <prefix>.devicelists through w: one device_list record per row, keyed by
// the user, in the same rounds as the events and after them (the router
// judges who shares a room with the user against membership at least as new).
func WithDeviceLists(w Writer) Option {
	return func(r *Relay) { r.added = append(r.added, deviceListTable(w)) }
}

func deviceListTable(w Writer) tableStream {
	return tableStream{
		stream: "devicelists", table: "device_lists_stream", position: "stream_id",
		columns: "stream_id, user_id, kind, device_id, content",
		kind:    schema.KindDeviceList, topic: "devicelists", w: w,
		scan: func(rows pgx.Rows) (int64, []byte, []byte, error) {
			rec := schema.DeviceListRecord{V: schema.SchemaVersion, Kind: schema.KindDeviceList}
			var kind, content string
			if err := rows.Scan(&rec.Position, &rec.UserID, &kind, &rec.DeviceID, &content); err != nil {
				return 0, nil, nil, err
			}
			rec.EDUType = schema.EDUDeviceListUpdate
			if kind == "signing_keys" {
				rec.EDUType = schema.EDUSigningKeyUpdate
			}
			rec.Content = json.RawMessage(content)
			v, err := rec.Marshal()
			if err != nil {
				return 0, nil, nil, fmt.Errorf("encoding the device-list update of %s: %w", rec.UserID, err)
			}
			return rec.Position, []byte(rec.UserID), v, nil
		},
	}
}
