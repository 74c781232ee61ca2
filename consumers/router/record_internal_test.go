package router

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
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
			msgs, err := pduRecords(rec, dests, partitioner(c.partitions), "router-test")
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

// BenchmarkOutboundBytesPerEvent reports the bytes an event's outbound pdu
// records take (values and keys) for rooms of 5, 50 and 500 remote servers
// over the default 32 outbound partitions, one record per destination (as
// before records listed destinations) and one per partition, with a 1 KiB
// PDU.
//
//	go test -run '^$' -bench OutboundBytesPerEvent ./consumers/router
func BenchmarkOutboundBytesPerEvent(b *testing.B) {
	pdu := `{"type":"m.room.message","content":{"body":"` + strings.Repeat("x", 900) + `"},"sender":"@a:hs.test","room_id":"!r:hs.test"}`
	rec := schema.RoomRecord{V: 1, Kind: schema.KindEvent, Position: 7, RoomID: "!r:hs.test", RoomVersion: "10", EventID: "$e",
		Origin: "hs.test", Type: "m.room.message", PDU: []byte(pdu)}
	for _, servers := range []int{5, 50, 500} {
		var dests []string
		for i := range servers {
			dests = append(dests, fmt.Sprintf("server%d.example.org", i))
		}
		for _, c := range []struct {
			name       string
			partitions int
		}{{"per destination", 0}, {"per partition", 32}} {
			b.Run(fmt.Sprintf("%d servers %s", servers, c.name), func(b *testing.B) {
				var bytes, records int
				for b.Loop() {
					msgs, err := pduRecords(rec, dests, partitioner(c.partitions), "router")
					if err != nil {
						b.Fatal(err)
					}
					bytes, records = 0, len(msgs)
					for _, m := range msgs {
						bytes += len(m.Key) + len(m.Value)
					}
				}
				b.ReportMetric(float64(bytes), "bytes/event")
				b.ReportMetric(float64(records), "records/event")
			})
		}
	}
}

// partitioner is the router's partitionOf for n outbound partitions (nil for
// none: one record per destination).
func partitioner(n int) func(string) int {
	if n == 0 {
		return nil
	}
	return kafkaio.Partitioner(n)
}
