package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/schema"
)

// UserSyncMessage is a user-sync record read back from its topic, with where
// it was read.
type UserSyncMessage struct {
	schema.UserSyncRecord
	Partition int
	Key       string
	Headers   map[string]string
	Raw       string
}

// ReadUserSync reads every record of a user-sync topic of the given number of
// partitions until at least n have arrived or 20 s have passed, in partition
// then offset order. Each record must match its JSON Schema, be keyed by its
// instance and carry the headers its body implies; the test fails otherwise.
func ReadUserSync(t testing.TB, addr, topic string, partitions, n int) []UserSyncMessage {
	t.Helper()
	var out []UserSyncMessage
	deadline := time.Now().Add(20 * time.Second)
	client := &kafka.Client{Addr: kafka.TCP(addr), Timeout: 10 * time.Second}
	for {
		out = out[:0]
		ends := partitionEnds(t, client, topic, partitions)
		for p := range partitions {
			out = append(out, readPartition(t, addr, topic, p, ends[p])...)
		}
		if len(out) >= n || time.Now().After(deadline) {
			return out
		}
		time.Sleep(20 * time.Millisecond) // poll interval while records are still being written
	}
}

// partitionEnds asks the broker for each partition's log start and end.
func partitionEnds(t testing.TB, client *kafka.Client, topic string, partitions int) map[int][2]int64 {
	t.Helper()
	var reqs []kafka.OffsetRequest
	for p := range partitions {
		reqs = append(reqs, kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	resp, err := client.ListOffsets(context.Background(), &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		t.Fatalf("listing the offsets of %s: %v", topic, err)
	}
	out := map[int][2]int64{}
	for _, po := range resp.Topics[topic] {
		if po.Error != nil {
			t.Fatalf("listing the offsets of %s/%d: %v", topic, po.Partition, po.Error)
		}
		out[po.Partition] = [2]int64{po.FirstOffset, po.LastOffset}
	}
	return out
}

// readPartition reads partition p from its log start up to end (its high
// watermark when asked): the end is a positive signal, and any fetch error
// before it fails the test instead of passing for the end of the partition.
func readPartition(t testing.TB, addr, topic string, p int, bounds [2]int64) []UserSyncMessage {
	t.Helper()
	if bounds[1] <= bounds[0] {
		return nil
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: topic, Partition: p, MaxWait: 500 * time.Millisecond})
	defer r.Close()
	if err := r.SetOffset(bounds[0]); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []UserSyncMessage
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("reading %s/%d up to offset %d: %v", topic, p, bounds[1], err)
		}
		if err := schema.ValidateRecord("usersync", m.Value); err != nil {
			t.Fatalf("record %s violates the schema: %v", m.Value, err)
		}
		rec, err := schema.DecodeUserSyncRecord(m.Value)
		if err != nil {
			t.Fatalf("record %s: %v", m.Value, err)
		}
		h := map[string]string{}
		for _, hd := range m.Headers {
			h[hd.Key] = string(hd.Value)
		}
		if string(m.Key) != rec.Instance || h[schema.HeaderKind] != rec.Kind || h[schema.HeaderSchema] != "1" || h[schema.HeaderInstance] != rec.Instance {
			t.Fatalf("record %s: key %q, headers %v", m.Value, m.Key, h)
		}
		out = append(out, UserSyncMessage{UserSyncRecord: rec, Partition: p, Key: string(m.Key), Headers: h, Raw: string(m.Value)})
		if m.Offset >= bounds[1]-1 {
			return out
		}
	}
}
