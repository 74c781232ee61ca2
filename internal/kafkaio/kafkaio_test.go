package kafkaio_test

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

func TestCreateTopicsIdempotent(t *testing.T) {
	k := testenv.NewKafka(t)
	cfg := kafkaio.TopicsConfig{Prefix: k.Prefix, Partitions: 3, OutboundPartitions: 5}
	for i := 0; i < 2; i++ {
		if err := kafkaio.CreateTopics(context.Background(), []string{k.Addr}, cfg, slog.New(slog.DiscardHandler)); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
	}
	ctx := context.Background()
	if n, err := kafkaio.Partitions(ctx, []string{k.Addr}, k.Topic("outbound")); err != nil || n != 5 {
		t.Errorf("Partitions(outbound) = %d, %v; want 5", n, err)
	}
	if n, err := kafkaio.Partitions(ctx, []string{k.Addr}, k.Topic("room")); err != nil || n != 3 {
		t.Errorf("Partitions(room) = %d, %v; want 3", n, err)
	}
	if got := k.TopicConfig(t, k.Topic("state"), "cleanup.policy"); got != "compact" {
		t.Errorf("state topic cleanup.policy = %q, want compact", got)
	}
	if got := k.TopicConfig(t, k.Topic("typing"), "retention.ms"); got != "60000" {
		t.Errorf("typing topic retention.ms = %q, want 60000", got)
	}
	if n, err := kafkaio.Partitions(ctx, []string{k.Addr}, k.Topic("missing")); err == nil {
		t.Errorf("Partitions of a missing topic = %d, want an error", n)
	}
}

// The state topic as `fedpipe topics create` makes it compacts: after the log
// cleaner has run, each key's superseded records are gone and its latest
// record remains. On Apache Kafka this is the broker's log cleaner; on kfake,
// Cluster.Compact stands in for it.
func TestStateTopicCompacts(t *testing.T) {
	k := testenv.NewKafka(t)
	cfg := kafkaio.TopicsConfig{Prefix: k.Prefix, Partitions: 2, OutboundPartitions: 1}
	ctx := context.Background()
	if err := kafkaio.CreateTopics(ctx, []string{k.Addr}, cfg, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	topic := k.Topic("state")
	if err := k.WaitForLeaders(ctx, topic); err != nil {
		t.Fatal(err)
	}
	// Only the test's patience changes: segments roll after 100 ms (the active
	// segment is never cleaned) and any dirty share makes a log cleanable.
	k.AlterTopicConfig(t, topic, map[string]string{"segment.ms": "100", "min.cleanable.dirty.ratio": "0.01", "min.compaction.lag.ms": "0"})
	w := kafkaio.NewWriter([]string{k.Addr}, topic)
	defer w.Close()
	const keys, versions = 20, 10
	for v := 0; v < versions; v++ {
		var msgs []kafka.Message
		for i := 0; i < keys; i++ {
			msgs = append(msgs, kafka.Message{Key: []byte(fmt.Sprintf("!room%d:hs.test\x00m.room.member\x00@u:hs.test", i)), Value: []byte(strconv.Itoa(v))})
		}
		if err := w.WriteMessages(ctx, msgs...); err != nil {
			t.Fatal(err)
		}
	}
	var last map[string][]string
	deadline := time.Now().Add(90 * time.Second)
	for {
		// A record after segment.ms rolls the segment holding the versions, so
		// the cleaner may take it: one to each partition.
		for p := 0; p < 2; p++ {
			conn, err := kafka.DialLeader(ctx, "tcp", k.Addr, topic, p)
			if err != nil {
				t.Fatal(err)
			}
			_, err = conn.WriteMessages(kafka.Message{Key: []byte(fmt.Sprint("tick", p)), Value: []byte(time.Now().String())})
			conn.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
		if k.Cluster != nil {
			k.Cluster.Compact()
		}
		last = readTopic(t, k.Addr, topic, 2)
		compacted := len(last) == keys+2
		for key, vals := range last {
			if key != "tick0" && key != "tick1" && (len(vals) != 1 || vals[0] != strconv.Itoa(versions-1)) {
				compacted = false
			}
		}
		if compacted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not compacted after 90 s on %s: %v", k.Kind, last)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// readTopic reads every partition of topic from its first offset to its end
// and returns the values per key in offset order.
func readTopic(t *testing.T, addr, topic string, partitions int) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for p := 0; p < partitions; p++ {
		conn, err := kafka.DialLeader(context.Background(), "tcp", addr, topic, p)
		if err != nil {
			t.Fatal(err)
		}
		first, end, err := conn.ReadOffsets()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Seek(first, kafka.SeekAbsolute); err != nil {
			t.Fatal(err)
		}
		for off := first; off < end; {
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			m, err := conn.ReadMessage(1 << 20)
			if err != nil {
				t.Fatalf("reading %s/%d at %d of %d: %v", topic, p, off, end, err)
			}
			out[string(m.Key)] = append(out[string(m.Key)], string(m.Value))
			off = m.Offset + 1
		}
		conn.Close()
	}
	return out
}
