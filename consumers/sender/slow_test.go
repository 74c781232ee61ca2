package sender_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/consumers/sender"
	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/federation/testreceiver"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/schema"
)

// onePartition returns n destinations named prefix<i>.test that the router's
// murmur2 writer puts in partition 0 of 4.
func onePartition(prefix string, n int) []string {
	var out []string
	for i := 0; len(out) < n; i++ {
		d := fmt.Sprintf("%s%d.test", prefix, i)
		if (&kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: []byte(d)}, 0, 1, 2, 3) == 0 {
			out = append(out, d)
		}
	}
	return out
}

// publishAll persists one event per destination in dests (in order, rooms
// taking turns) and writes their outbound records in one batch.
func (e *env) publishAll(t *testing.T, base int, dests []string, rooms int) {
	t.Helper()
	evs := make([]outbox.EventWithDeltas, len(dests))
	for i := range dests {
		room := fmt.Sprintf("!r%d:me.test", (base+i)%rooms)
		pdu := json.RawMessage(fmt.Sprintf(`{"room_id":%q,"sender":"@a:me.test","type":"m.room.message","content":{"n":%d}}`, room, base+i))
		evs[i] = outbox.EventWithDeltas{Event: outbox.Event{EventID: fmt.Sprintf("$%043d", base+i+1), RoomID: room, RoomVersion: "10", Sender: "@a:me.test", Type: "m.room.message", PDU: pdu}}
	}
	pos, err := outbox.PersistBatch(context.Background(), e.pool, evs)
	if err != nil {
		t.Fatal(err)
	}
	msgs := make([]kafka.Message, len(dests))
	for i, d := range dests {
		ev := evs[i].Event
		rec, _ := schema.OutboundRecord{V: 1, Kind: schema.KindPDU, Destination: d, RoomID: ev.RoomID, EventID: ev.EventID, Position: pos[i], RoomVersion: "10", PDU: ev.PDU}.Marshal()
		msgs[i] = kafka.Message{Key: []byte(d), Value: rec}
	}
	w := &kafka.Writer{Addr: kafka.TCP(e.addr), Topic: e.k.Topic("out"), RequiredAcks: kafka.RequireAll, Balancer: &kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond, BatchSize: 1000}
	defer w.Close()
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
}

// One slow destination must not pin its partition: its queue is bounded (past
// the bound it catches up instead, its records done), so the partition's
// in-flight window does not fill with its records and the other destinations
// of the partition keep flowing (issue 11 item 4).
func TestASlowDestinationDoesNotStallItsPartition(t *testing.T) {
	all := onePartition("p", 4)
	slow, healthy := all[0], all[1:]
	e := setup(t, all...)
	e.recv.SetFault(slow, testreceiver.Fault{Delay: 5 * time.Second})
	e.reg = prometheus.NewRegistry()
	s, err := sender.New(sender.Config{OutboundPartitions: 4, Queue: queue.Config{Origin: "me.test", BackoffInitial: time.Hour, CatchUpInterval: 20 * time.Millisecond, MaxPending: 60}},
		e.pool, e.cl, slog.New(slog.DiscardHandler), e.reg)
	if err != nil {
		t.Fatal(err)
	}
	g, err := runtime.New(runtime.Config{Brokers: []string{e.addr}, GroupID: e.k.Group("sender"), Topics: []string{e.k.Topic("out")}, DeadLetterTopic: e.k.Topic("dead"),
		CommitInterval: 20 * time.Millisecond, MaxInFlight: 400}, s, slog.New(slog.DiscardHandler), e.reg)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Background(t, "sender", s.Run)
	testenv.Background(t, "sender group", g.Run)

	// Steady traffic on one partition, 400 records a second for 3 s, a
	// quarter of them for the slow destination, which takes 5 s per
	// transaction. Unbounded, its queue would hold its records undone and the
	// 400-record window would move 50 slow records (200 records) per 5 s:
	// 30 s for the 1,200. Bounded, only its first transaction holds the
	// window; past 60 queued it catches up instead, its records done.
	start := time.Now()
	for b := 0; b < 30; b++ {
		var dests []string
		for i := 0; i < 10; i++ {
			dests = append(dests, slow, healthy[0], healthy[1], healthy[2])
		}
		e.publishAll(t, 40*b, dests, 3)
		time.Sleep(time.Until(start.Add(time.Duration(b+1) * 100 * time.Millisecond)))
	}
	// Unbounded, the slow destination's 300 records need at least six 5 s
	// transactions before the last is done: 30 s at the very least, however
	// fast the machine. Bounded, they are done once its first transactions
	// return, and the healthy destinations get everything meanwhile.
	testenv.Eventually(t, 25*time.Second, "every record done and every healthy destination's 300 PDUs delivered", func() bool {
		for _, d := range healthy {
			if len(e.recv.PDUs(d)) < 300 {
				return false
			}
		}
		return e.committed(t) == 1200
	})
	t.Logf("healthy destinations delivered in %s beside the slow one (%v overflows)", time.Since(start).Round(time.Millisecond), e.counter(t, "fedpipe_sender_queue_overflows_total", "", ""))
	if n := e.counter(t, "fedpipe_sender_queue_overflows_total", "", ""); n < 1 {
		t.Fatalf("the slow destination's queue never overflowed to catch-up (%v)", n)
	}
	var rows int
	if err := e.pool.QueryRow(context.Background(), "SELECT count(*) FROM sender_catchup WHERE destination = $1", slow).Scan(&rows); err != nil || rows == 0 {
		t.Fatalf("%d catch-up rows for the slow destination (%v), want its missed rooms", rows, err)
	}
	if n := e.recv.ConcurrentRejections(); n != 0 {
		t.Fatalf("%d overlapping transactions", n)
	}
}
