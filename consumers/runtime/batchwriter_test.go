package runtime_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// readTopic reads every record of a one-partition topic up to its end.
func readTopic(t *testing.T, addr, topic string) []kafka.Message {
	t.Helper()
	conn, err := kafka.DialLeader(context.Background(), "tcp", addr, topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	end, err := conn.ReadLastOffset()
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: topic, Partition: 0, MaxBytes: 4 << 20, MaxWait: 200 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []kafka.Message
	for int64(len(out)) < end {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("reading %s: %v", topic, err)
		}
		out = append(out, m)
	}
	return out
}

func header(m kafka.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// TestBatchWriterDeadLettersRecordsThatCanNeverBeWritten: a record over the
// writer's 1 MiB limit (kafka-go refuses it before sending) and one over the
// topic's max.message.bytes (the broker refuses its batch) used to be
// retried forever, and every later write waited behind them. They go to the
// dead-letter topic (value cut, size in a header), are counted, and the
// records around them are written in order with every done called.
func TestBatchWriterDeadLettersRecordsThatCanNeverBeWritten(t *testing.T) {
	cluster, addr := testenv.Broker(t)
	if err := cluster.CreateTopic("out", 1, map[string]string{"max.message.bytes": "20000"}); err != nil {
		t.Fatal(err)
	}
	if err := cluster.CreateTopic("dead", 1, nil); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	b := runtime.NewBatchWriter(kafkaio.NewWriter([]string{addr}, "out"), 100, time.Millisecond, slog.New(slog.DiscardHandler), reg,
		runtime.WithDeadLetters(kafkaio.NewWriter([]string{addr}, "dead"), "out", "router", "test-instance"))
	ctx, cancel := context.WithCancel(context.Background())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return b.Run(gctx) })
	defer func() {
		cancel()
		if err := g.Wait(); err != nil {
			t.Errorf("batch writer: %v", err)
		}
	}()

	huge := strings.Repeat("h", 1100<<10) // over kafka-go's BatchBytes
	big := strings.Repeat("b", 30000)     // under it, over the topic's limit
	var mu sync.Mutex
	done := 0
	for i := range 20 {
		msgs := []kafka.Message{{Key: []byte("k"), Value: []byte(fmt.Sprint("small ", i))}}
		switch i {
		case 5:
			msgs = append(msgs, kafka.Message{Key: []byte("k"), Value: []byte(huge), Headers: []kafka.Header{{Key: "kind", Value: []byte("presence")}}})
		case 12:
			msgs = append(msgs, kafka.Message{Key: []byte("k"), Value: []byte(big)})
		}
		if err := b.Write(ctx, msgs, func() { mu.Lock(); done++; mu.Unlock() }); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 20*time.Second, "every write done", func() bool { mu.Lock(); defer mu.Unlock(); return done == 20 })

	var got []string
	for _, m := range readTopic(t, addr, "out") {
		got = append(got, string(m.Value))
	}
	for i, j := 0, 0; i < 20; i++ { // in order; a retried batch may repeat records
		want := fmt.Sprint("small ", i)
		for j < len(got) && got[j] != want {
			j++
		}
		if j == len(got) {
			t.Fatalf("%q missing or out of order in %q", want, got)
		}
	}
	dead := readTopic(t, addr, "dead")
	if len(dead) != 2 {
		t.Fatalf("%d dead letters, want 2", len(dead))
	}
	for i, want := range []int{len(huge), len(big)} {
		m := dead[i]
		if header(m, "source_topic") != "out" || header(m, "deadletter_writer") != "router" || header(m, "deadletter_instance") != "test-instance" ||
			!strings.Contains(header(m, "deadletter_reason"), "Too Large") {
			t.Errorf("dead letter %d headers: %v", i, m.Headers)
		}
		if len(m.Value) != min(want, kafkaio.MaxDeadLetterValueBytes) {
			t.Errorf("dead letter %d carries %d bytes of a %d-byte value", i, len(m.Value), want)
		}
	}
	if header(dead[0], "kind") != "presence" || header(dead[0], "deadletter_value_bytes") != fmt.Sprint(len(huge)) {
		t.Errorf("the cut dead letter lost its headers or size: %v", dead[0].Headers)
	}
	if n := testenv.Value(t, reg, "fedpipe_batchwriter_records_deadlettered_total"); n != 2 {
		t.Errorf("fedpipe_batchwriter_records_deadlettered_total = %v, want 2", n)
	}
}

// TestBatchWriterWithoutDeadLettersStops: with nowhere to put a record that
// can never be written, Run returns an error instead of retrying for ever.
func TestBatchWriterWithoutDeadLettersStops(t *testing.T) {
	cluster, addr := testenv.Broker(t)
	if err := cluster.CreateTopic("out", 1, nil); err != nil {
		t.Fatal(err)
	}
	b := runtime.NewBatchWriter(kafkaio.NewWriter([]string{addr}, "out"), 100, time.Millisecond, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.Write(ctx, []kafka.Message{{Value: make([]byte, 2<<20)}}, func() { t.Error("done called for an unwritten record") }); err != nil {
		t.Fatal(err)
	}
	err := b.Run(ctx)
	if !errors.Is(err, kafkaio.ErrNoDeadLetters) || !errors.Is(err, kafka.MessageSizeTooLarge) {
		t.Fatalf("Run returned %v, want the refusal", err)
	}
}
