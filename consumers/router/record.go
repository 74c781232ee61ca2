package router

import (
	"fmt"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/schema"
)

// pduRecords builds one outbound pdu record per destination, keyed by the
// destination. The PDU bytes go through untouched (OutboundRecord.Marshal
// splices them in rather than re-encoding them).
func pduRecords(rec schema.RoomRecord, dests []string, instance string) ([]kafka.Message, error) {
	headers := schema.NewHeaders(schema.KindPDU).WithPosition(rec.Position).WithInstance(instance)
	msgs := make([]kafka.Message, 0, len(dests))
	for _, d := range dests {
		value, err := schema.OutboundRecord{
			V: schema.SchemaVersion, Kind: schema.KindPDU, Destination: d,
			RoomID: rec.RoomID, EventID: rec.EventID, Position: rec.Position, RoomVersion: rec.RoomVersion, PDU: rec.PDU,
		}.Marshal()
		if err != nil {
			return nil, fmt.Errorf("encoding pdu record of %s for %s: %w", rec.EventID, d, err)
		}
		msgs = append(msgs, headers.Message([]byte(d), value))
	}
	return msgs, nil
}
