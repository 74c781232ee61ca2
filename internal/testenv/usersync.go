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
	for {
		out = out[:0]
		for p := range partitions {
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: topic, Partition: p, MaxWait: 500 * time.Millisecond})
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			for {
				m, err := r.FetchMessage(ctx)
				if err != nil {
					break
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
			}
			cancel()
			r.Close()
		}
		if len(out) >= n || time.Now().After(deadline) {
			return out
		}
	}
}
