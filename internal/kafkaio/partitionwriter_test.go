package kafkaio_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// relayMessages returns n records keyed by rooms as the relay keys them,
// valued call/i so that a read-back names the call and the record.
func relayMessages(call string, n, rooms int) []kafka.Message {
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		msgs[i] = kafka.Message{Key: []byte(fmt.Sprintf("!room%d:hs.test", i%rooms)), Value: []byte(fmt.Sprintf("%s/%d", call, i)),
			Headers: []kafka.Header{{Key: "kind", Value: []byte("event")}}}
	}
	return msgs
}

// readBatches fetches partition p of topic from its start and returns the
// values of its records, one slice per record batch, as the broker stored them.
func readBatches(t *testing.T, addr, topic string, p int) [][]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := &kafka.Client{Addr: kafka.TCP(addr), Timeout: 10 * time.Second}
	res, err := c.Fetch(ctx, &kafka.FetchRequest{Topic: topic, Partition: p, Offset: 0, MinBytes: 1, MaxBytes: 50 << 20, MaxWait: 100 * time.Millisecond})
	if err == nil {
		err = res.Error
	}
	if err != nil {
		t.Fatalf("fetching %s/%d: %v", topic, p, err)
	}
	stream, ok := res.Records.(*protocol.RecordStream)
	if !ok && res.HighWatermark == 0 {
		return nil // an empty partition
	}
	if !ok {
		t.Fatalf("fetching %s/%d: records are a %T, want a *protocol.RecordStream of batches", topic, p, res.Records)
	}
	var batches [][]string
	for _, b := range stream.Records {
		var values []string
		for {
			r, err := b.ReadRecord()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("reading %s/%d: %v", topic, p, err)
			}
			v, err := io.ReadAll(r.Value)
			if err != nil {
				t.Fatal(err)
			}
			values = append(values, string(v))
		}
		batches = append(batches, values)
	}
	return batches
}

// Records land on the partitions kafka.Murmur2Balancer (Kafka's default
// partitioner) picks for their keys, in the order written, and each call puts
// each partition's records in one record batch: two calls, two batches.
func TestPartitionWriterOneBatchPerPartitionLikeMurmur2(t *testing.T) {
	k := testenv.NewKafka(t)
	const parts = 5
	topic := k.CreateTopic(t, "room", parts, nil)
	w := kafkaio.NewPartitionWriter([]string{k.Addr}, topic)
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	calls := [][]kafka.Message{relayMessages("a", 300, 37), relayMessages("b", 120, 11)}
	want := make([][][]string, parts) // partition → call → values
	for p := range want {
		want[p] = make([][]string, len(calls))
	}
	for c, msgs := range calls {
		if err := w.WriteMessages(ctx, msgs...); err != nil {
			t.Fatalf("call %d: %v", c, err)
		}
		for _, m := range msgs {
			p := (&kafka.Murmur2Balancer{}).Balance(m, 0, 1, 2, 3, 4)
			want[p][c] = append(want[p][c], string(m.Value))
		}
	}
	for p := range parts {
		var wantBatches [][]string
		for _, vs := range want[p] {
			if len(vs) > 0 {
				wantBatches = append(wantBatches, vs)
			}
		}
		got := readBatches(t, k.Addr, topic, p)
		if fmt.Sprint(got) != fmt.Sprint(wantBatches) {
			t.Errorf("partition %d holds batches\n%v\nwant (murmur2, one batch per call)\n%v", p, got, wantBatches)
		}
	}
	if w.Topic() != topic {
		t.Errorf("Topic() = %q, want %q", w.Topic(), topic)
	}
}

// A record over the writer's byte bound is refused before it is sent, as a
// *kafka.Writer refuses one over BatchBytes, and the call's other records are
// written: WriteAll dead-letters only it.
func TestPartitionWriterRefusesARecordOverItsBound(t *testing.T) {
	k := testenv.NewKafka(t)
	topic := k.CreateTopic(t, "room", 3, nil)
	dead := k.CreateTopic(t, "deadletter", 1, nil)
	w := kafkaio.NewPartitionWriter([]string{k.Addr}, topic)
	defer w.Close()
	dw := kafkaio.NewWriter([]string{k.Addr}, dead)
	defer dw.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	msgs := relayMessages("a", 10, 4)
	huge := 4
	msgs[huge].Value = []byte(strings.Repeat("x", kafkaio.MaxRecordBytes))
	err := w.WriteMessages(ctx, msgs...)
	var we kafka.WriteErrors
	if !errors.As(err, &we) || len(we) != len(msgs) || !kafkaio.Refused(err) {
		t.Fatalf("WriteMessages = %v, want kafka.WriteErrors of %d saying refused", err, len(msgs))
	}
	for i, e := range we {
		var tl kafka.MessageTooLargeError
		if (i == huge) != errors.As(e, &tl) || i != huge && e != nil {
			t.Errorf("message %d: error %v", i, e)
		}
	}
	if n := countRecords(t, k.Addr, topic, 3); n != len(msgs)-1 {
		t.Fatalf("%d records written, want the %d under the bound", n, len(msgs)-1)
	}

	// Through WriteAll, as the relay writes: only the large one is dead-lettered.
	msgs = relayMessages("b", 10, 4)
	msgs[huge].Value = []byte(strings.Repeat("x", kafkaio.MaxRecordBytes))
	n, err := kafkaio.WriteAll(ctx, w, msgs, &kafkaio.DeadLetters{W: dw, Target: topic, Writer: "relay", Instance: "test"})
	if err != nil || n != 1 {
		t.Fatalf("WriteAll = %d, %v; want 1 dead-lettered", n, err)
	}
	if got := countRecords(t, k.Addr, topic, 3); got != 2*(len(msgs)-1) {
		t.Errorf("%d records written, want %d (no duplicates)", got, 2*(len(msgs)-1))
	}
	if got := countRecords(t, k.Addr, dead, 1); got != 1 {
		t.Errorf("%d dead letters, want 1", got)
	}
}

// A batch the broker refuses for its size (over the topic's
// max.message.bytes) fails its partition's records with MESSAGE_TOO_LARGE,
// which Refused reports; the other partitions are written. WriteAll writes
// the refused partition's records again one by one and dead-letters only the
// one the broker refuses on its own.
func TestPartitionWriterBrokerRefusal(t *testing.T) {
	k := testenv.NewKafka(t)
	topic := k.CreateTopic(t, "room", 4, map[string]string{"max.message.bytes": "4096"})
	dead := k.CreateTopic(t, "deadletter", 1, nil)
	w := kafkaio.NewPartitionWriter([]string{k.Addr}, topic)
	defer w.Close()
	dw := kafkaio.NewWriter([]string{k.Addr}, dead)
	defer dw.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	msgs := relayMessages("a", 40, 8)
	big := 9
	msgs[big].Value = []byte(strings.Repeat("x", 8000)) // under the writer's bound, over the topic's
	bigPart := (&kafka.Murmur2Balancer{}).Balance(msgs[big], 0, 1, 2, 3)
	err := w.WriteMessages(ctx, msgs...)
	var we kafka.WriteErrors
	if !errors.As(err, &we) || len(we) != len(msgs) || !kafkaio.Refused(err) {
		t.Fatalf("WriteMessages = %v, want kafka.WriteErrors of %d saying refused", err, len(msgs))
	}
	mates := 0
	for i, e := range we {
		inBig := (&kafka.Murmur2Balancer{}).Balance(msgs[i], 0, 1, 2, 3) == bigPart
		if inBig != (e != nil) {
			t.Errorf("message %d (partition of the large one: %v): error %v", i, inBig, e)
		}
		if inBig && i != big {
			mates++
		}
		if e != nil && !errors.Is(e, kafka.MessageSizeTooLarge) && !errors.Is(e, kafka.RecordListTooLarge) {
			t.Errorf("message %d: error %v, want the broker's size refusal", i, e)
		}
	}
	if mates == 0 {
		t.Fatal("no other record shares the large one's partition: the test shows nothing")
	}
	written := countRecords(t, k.Addr, topic, 4)
	if written != len(msgs)-1-mates {
		t.Fatalf("%d records written, want the %d of the other partitions", written, len(msgs)-1-mates)
	}

	n, err := kafkaio.WriteAll(ctx, w, msgs, &kafkaio.DeadLetters{W: dw, Target: topic, Writer: "relay", Instance: "test"})
	if err != nil || n != 1 {
		t.Fatalf("WriteAll = %d, %v; want 1 dead-lettered", n, err)
	}
	if got := countRecords(t, k.Addr, dead, 1); got != 1 {
		t.Errorf("%d dead letters, want 1", got)
	}
	if got := countRecords(t, k.Addr, topic, 4); got != written+len(msgs)-1 {
		t.Errorf("%d records after WriteAll, want %d", got, written+len(msgs)-1)
	}
}

// Writing to a topic that does not exist fails after the writer's bounded
// attempts, and at once when ctx ends first: never a hang.
func TestPartitionWriterMissingTopic(t *testing.T) {
	k := testenv.NewKafka(t)
	w := kafkaio.NewPartitionWriter([]string{k.Addr}, k.Topic("missing"))
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err := w.WriteMessages(ctx, relayMessages("a", 3, 3)...)
	if !errors.Is(err, kafka.UnknownTopicOrPartition) {
		t.Fatalf("WriteMessages = %v, want unknown topic", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("gave up after %v, want the attempts' few seconds", d)
	}

	short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start = time.Now()
	if err := w.WriteMessages(short, relayMessages("b", 3, 3)...); err == nil {
		t.Fatal("WriteMessages to a missing topic succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("returned %v after a 300 ms context", d)
	}

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteMessages(ctx, relayMessages("c", 1, 1)...); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("WriteMessages after Close = %v, want io.ErrClosedPipe", err)
	}
}

// When a partition's leader moves to another broker, the old leader answers
// NOT_LEADER_FOR_PARTITION; the writer refreshes the cluster's layout and
// writes the records to the new leader within the same call, still one batch.
func TestPartitionWriterFollowsAMovedLeader(t *testing.T) {
	k := testenv.NewKafka(t, kfake.NumBrokers(3))
	c := k.RequireKfake(t, "moves partition leaders")
	topic := k.CreateTopic(t, "room", 2, nil)
	w := kafkaio.NewPartitionWriter([]string{k.Addr}, topic)
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var want [2][][]string
	for round := range 4 {
		if round > 0 {
			for p := range int32(2) {
				if err := c.MoveTopicPartition(topic, p, (c.LeaderFor(topic, p)+1)%3); err != nil {
					t.Fatal(err)
				}
			}
		}
		msgs := relayMessages(fmt.Sprint(round), 20, 6)
		if err := w.WriteMessages(ctx, msgs...); err != nil {
			t.Fatalf("round %d, after the leaders moved: %v", round, err)
		}
		var byPart [2][]string
		for _, m := range msgs {
			p := (&kafka.Murmur2Balancer{}).Balance(m, 0, 1)
			byPart[p] = append(byPart[p], string(m.Value))
		}
		for p := range byPart {
			want[p] = append(want[p], byPart[p])
		}
	}
	for p := range 2 {
		if got := readBatches(t, k.Addr, topic, p); fmt.Sprint(got) != fmt.Sprint(want[p]) {
			t.Errorf("partition %d holds %v, want %v", p, got, want[p])
		}
	}
}

// countRecords counts the records of topic's partitions.
func countRecords(t *testing.T, addr, topic string, partitions int) int {
	t.Helper()
	n := 0
	for p := range partitions {
		for _, b := range readBatches(t, addr, topic, p) {
			n += len(b)
		}
	}
	return n
}

// A partition's records of one call that are more than a batch may hold go
// as several batches, in order, each within the bound: the router's batches
// of outbound records are not bounded in bytes as the relay's rounds are.
func TestPartitionWriterSplitsARecordListOverTheBound(t *testing.T) {
	k := testenv.NewKafka(t)
	topic := k.CreateTopic(t, "outbound", 1, map[string]string{"max.message.bytes": "2097152"})
	w := kafkaio.NewPartitionWriter([]string{k.Addr}, topic)
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Five records of 300 KB: three fit under MaxRecordBytes (1 MiB).
	msgs := make([]kafka.Message, 5)
	var want []string
	for i := range msgs {
		v := fmt.Sprintf("%d/%s", i, strings.Repeat("x", 300_000))
		msgs[i] = kafka.Message{Key: []byte("dest.test"), Value: []byte(v)}
		want = append(want, v[:1])
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	var got [][]string
	for _, b := range readBatches(t, k.Addr, topic, 0) {
		var firsts []string
		for _, v := range b {
			firsts = append(firsts, v[:1])
		}
		got = append(got, firsts)
	}
	if fmt.Sprint(got) != fmt.Sprint([][]string{want[:3], want[3:]}) {
		t.Fatalf("batches %v, want %v", got, [][]string{want[:3], want[3:]})
	}
}
