package kafkaio_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// The two kinds of dead letter, as the admin page and an operator read them
// off the topic: the record's key, value and headers, then the headers saying
// why, where from and who gave up, in this order.
func TestDeadLetterHeaders(t *testing.T) {
	k := testenv.NewKafka(t)
	dead := k.CreateTopic(t, "deadletter", 1, nil)
	w := kafkaio.NewWriter([]string{k.Addr}, dead)
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	own := kafka.Header{Key: "kind", Value: []byte("pdu")}
	consumed := kafka.Message{Topic: "fp.room", Partition: 7, Offset: 42, Key: []byte("!r"), Value: []byte("v1"), Headers: []kafka.Header{own}}
	if err := (&kafkaio.ConsumedDeadLetters{W: w, Group: "router", Instance: "host-1"}).Write(ctx, consumed, errors.New("cannot decode")); err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", kafkaio.MaxDeadLetterValueBytes+1)
	for _, v := range []string{"v2", big} {
		if err := (&kafkaio.DeadLetters{W: w, Target: "fp.outbound", Writer: "relay", Instance: "host-2"}).Write(ctx, kafka.Message{Key: []byte("d"), Value: []byte(v), Headers: []kafka.Header{own}}, errors.New("too large")); err != nil {
			t.Fatal(err)
		}
	}

	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{k.Addr}, Topic: dead, Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	want := []struct{ key, value, headers string }{
		{"!r", "v1", "kind=pdu deadletter_reason=cannot decode source_topic=fp.room source_partition=7 source_offset=42 deadletter_group=router deadletter_instance=host-1"},
		{"d", "v2", "kind=pdu deadletter_reason=too large source_topic=fp.outbound deadletter_writer=relay deadletter_instance=host-2"},
		{"d", big[:kafkaio.MaxDeadLetterValueBytes], fmt.Sprintf("kind=pdu deadletter_reason=too large source_topic=fp.outbound deadletter_writer=relay deadletter_instance=host-2 deadletter_value_bytes=%d", len(big))},
	}
	for i, w := range want {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("dead letter %d: %v", i, err)
		}
		var hs []string
		for _, h := range m.Headers {
			hs = append(hs, h.Key+"="+string(h.Value))
		}
		if got := strings.Join(hs, " "); string(m.Key) != w.key || string(m.Value) != w.value || got != w.headers {
			t.Errorf("dead letter %d: key %q, %d-byte value, headers\n%s\nwant key %q, %d bytes, headers\n%s", i, m.Key, len(m.Value), got, w.key, len(w.value), w.headers)
		}
	}
}

// TopicDurations reads millisecond settings of a topic off the brokers, -1
// meaning forever.
func TestTopicDurations(t *testing.T) {
	k := testenv.NewKafka(t)
	topic := k.CreateTopic(t, "room", 1, map[string]string{"retention.ms": "-1", "segment.ms": "3600000"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := kafkaio.TopicDurations(ctx, []string{k.Addr}, topic, "retention.ms", "segment.ms")
	if err != nil {
		t.Fatal(err)
	}
	if got["retention.ms"] != -1 || got["segment.ms"] != time.Hour {
		t.Errorf("durations %v, want retention.ms -1 and segment.ms 1h", got)
	}
	if _, err := kafkaio.TopicDurations(ctx, []string{k.Addr}, k.Topic("missing"), "retention.ms"); err == nil {
		t.Error("the durations of a missing topic, want an error")
	}
}
