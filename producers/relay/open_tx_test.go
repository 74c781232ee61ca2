package relay_test

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/schema"
)

// topicCount is the number of records on topic: the sum of its partitions'
// high watermarks.
func topicCount(t *testing.T, addr, topic string) int64 {
	t.Helper()
	conn, err := kafka.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, p := range parts {
		pc, err := kafka.DialLeader(context.Background(), "tcp", addr, topic, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		last, err := pc.ReadLastOffset()
		pc.Close()
		if err != nil {
			t.Fatal(err)
		}
		n += last
	}
	return n
}

// The brief's scenario, checked on the topic itself rather than on the stored
// position: positions 1-4 committed, A takes 5 and stays open, B takes 6 and
// commits. Nothing past 4 reaches Kafka until A commits; then 5 and 6 arrive,
// in that order, once each.
func TestNothingPublishedPastAnOpenTransaction(t *testing.T) {
	e := setup(t, nil)
	ctx := context.Background()
	stop, _ := e.relay()
	defer stop()
	const room = "!open:hs.test"
	for i := 1; i <= 4; i++ {
		if _, err := outbox.PersistBatch(ctx, e.pool, []outbox.EventWithDeltas{ev(room, i, "")}); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 10*time.Second, "positions 1-4 on the room topic", func() bool { return topicCount(t, e.addr, e.room) == 4 })

	a, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Rollback(ctx) //nolint:errcheck // committed below; a no-op then
	posA, err := outbox.Persist(ctx, a, []outbox.EventWithDeltas{ev(room, 5, "")})
	if err != nil {
		t.Fatal(err)
	}
	posB, err := outbox.PersistBatch(ctx, e.pool, []outbox.EventWithDeltas{ev(room, 6, "")})
	if err != nil {
		t.Fatal(err)
	}
	if posA[0] != 5 || posB[0] != 6 {
		t.Fatalf("positions A=%d B=%d, want 5 and 6", posA[0], posB[0])
	}
	// Thirty poll intervals with B committed and A open: nothing moves.
	for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); {
		if n := topicCount(t, e.addr, e.room); n != 4 {
			t.Fatalf("%d records on the room topic while position 5 is uncommitted, want 4", n)
		}
		time.Sleep(10 * time.Millisecond) // a negative check: there is no event to wait for
	}
	if err := a.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "positions 5 and 6 on the room topic", func() bool { return topicCount(t, e.addr, e.room) == 6 })
	msgs := readAll(t, e.addr, e.room, 6)
	if len(msgs) != 6 {
		t.Fatalf("%d records, want 6", len(msgs))
	}
	for i, m := range msgs { // one room: one partition, in offset order
		rec, err := schema.DecodeRoomRecord(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Position != int64(i+1) {
			t.Fatalf("record %d has position %d, want %d", i, rec.Position, i+1)
		}
	}
}
