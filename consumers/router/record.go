package router

import (
	"fmt"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/schema"
)

// pduRecords builds the outbound pdu records of an event: one per outbound
// partition its destinations fall in (partitionOf: kafkaio.Partitioner, as
// the writer's balancer places the key), listing that partition's
// destinations, keyed by the first, so an event's bytes cross the broker once
// per partition rather than once per destination. With partitionOf nil
// (partitions unknown) it is one record per destination. The PDU bytes go through untouched
// (OutboundRecord.Marshal splices them in rather than re-encoding them).
func pduRecords(rec schema.RoomRecord, dests []string, partitionOf func(string) int, instance string) ([]kafka.Message, error) {
	headers := schema.NewHeaders(schema.KindPDU).WithPosition(rec.Position).WithInstance(instance)
	var msgs []kafka.Message
	for _, group := range byPartition(dests, partitionOf) {
		r := schema.OutboundRecord{
			V: schema.SchemaVersion, Kind: schema.KindPDU, Destination: group[0],
			RoomID: rec.RoomID, EventID: rec.EventID, Position: rec.Position, RoomVersion: rec.RoomVersion, PDU: rec.PDU,
		}
		if len(group) > 1 {
			r.Destinations = group
		}
		value, err := r.Marshal()
		if err != nil {
			return nil, fmt.Errorf("encoding pdu record of %s for %s: %w", rec.EventID, group[0], err)
		}
		msgs = append(msgs, headers.Message([]byte(group[0]), value))
	}
	return msgs, nil
}

// byPartition groups dests by their outbound partition (partitionOf), in the
// order each partition first appears, each group in dests' order and at most
// schema.MaxRecordDestinations long. With partitionOf nil every destination
// is a group of its own.
func byPartition(dests []string, partitionOf func(string) int) [][]string {
	if partitionOf == nil {
		groups := make([][]string, len(dests))
		for i := range dests {
			groups[i] = dests[i : i+1 : i+1]
		}
		return groups
	}
	index := map[int]int{} // partition → its group's index
	var groups [][]string
	for _, d := range dests {
		p := partitionOf(d)
		i, ok := index[p]
		if !ok || len(groups[i]) == schema.MaxRecordDestinations {
			index[p] = len(groups)
			i = len(groups)
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], d)
	}
	return groups
}
