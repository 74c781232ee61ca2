package router

import (
	"fmt"
	"slices"
	"testing"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/schema"
)

// An event's destinations go out as one record per outbound partition they
// fall in (as the writer's murmur2 balancer places the key), each listing its
// partition's destinations, cut at schema.MaxRecordDestinations.
func TestPDURecordsOnePerPartition(t *testing.T) {
	rec := schema.RoomRecord{V: 1, Kind: schema.KindEvent, Position: 7, RoomID: "!r:hs.test", RoomVersion: "10", EventID: "$e",
		Origin: "hs.test", Type: "m.room.message", PDU: []byte(`{"type":"m.room.message"}`)}
	for _, c := range []struct {
		servers, partitions int
	}{{5, 32}, {50, 32}, {500, 32}, {2500, 2}, {7, 0}} {
		t.Run(fmt.Sprintf("%d servers over %d partitions", c.servers, c.partitions), func(t *testing.T) {
			var dests []string
			for i := range c.servers {
				dests = append(dests, fmt.Sprintf("s%d.test", i))
			}
			msgs, err := pduRecords(rec, dests, c.partitions, "router-test")
			if err != nil {
				t.Fatal(err)
			}
			parts := make([]int, max(c.partitions, 1))
			for i := range parts {
				parts[i] = i
			}
			partitionOf := func(d string) int {
				return (&kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: []byte(d)}, parts...)
			}
			wantRecords := map[int]int{} // partition → records
			for _, d := range dests {
				wantRecords[partitionOf(d)]++
			}
			var got []string
			records := map[int]int{}
			for _, m := range msgs {
				r, err := schema.DecodeOutboundRecord(m.Value)
				if err != nil {
					t.Fatal(err)
				}
				if string(m.Key) != r.Destination {
					t.Fatalf("keyed %q for %q", m.Key, r.Destination)
				}
				if len(r.Targets()) > schema.MaxRecordDestinations {
					t.Fatalf("a record of %d destinations", len(r.Targets()))
				}
				for _, d := range r.Targets() {
					if c.partitions > 0 && partitionOf(d) != partitionOf(r.Destination) {
						t.Fatalf("%s listed with the key %s of another partition", d, r.Destination)
					}
					got = append(got, d)
				}
				records[partitionOf(r.Destination)]++
			}
			slices.Sort(got)
			want := slices.Clone(dests)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("destinations %v, want %v", got, want)
			}
			for p, n := range wantRecords {
				wantN := (n + schema.MaxRecordDestinations - 1) / schema.MaxRecordDestinations
				if c.partitions == 0 {
					wantN = n
				}
				if records[p] != wantN {
					t.Errorf("partition %d: %d records for %d destinations, want %d", p, records[p], n, wantN)
				}
			}
		})
	}
}
