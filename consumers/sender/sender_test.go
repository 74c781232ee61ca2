package sender_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/consumers/sender"
	"github.com/fedpipe/fedpipe/federation/client"
	"github.com/fedpipe/fedpipe/federation/discovery"
	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/federation/signing"
	"github.com/fedpipe/fedpipe/federation/testreceiver"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/schema"
)

type env struct {
	t    testing.TB
	k    *testenv.Kafka
	addr string
	pool *pgxpool.Pool
	recv *testreceiver.Server
	cl   *client.Client
	reg  *prometheus.Registry // the stage's metrics, once run
}

func setup(t *testing.T, dests ...string) *env {
	t.Helper()
	k := testenv.NewKafka(t, kfake.GroupMinSessionTimeout(100*time.Millisecond))
	k.CreateTopic(t, "out", 4, nil)
	k.CreateTopic(t, "dead", 4, nil)
	addr := k.Addr
	pool := testenv.Pool(t, testenv.Database(t))
	if err := schema.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	key, _ := signing.GenerateKey()
	recv, err := testreceiver.Start(testreceiver.Config{Names: dests, Keys: func(string, string) (ed25519.PublicKey, error) { return key.Public(), nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = recv.Close() })
	static := map[string]string{}
	for _, d := range dests {
		static[d] = recv.Addr()
	}
	res, _ := discovery.New(discovery.Config{Static: static})
	cl, err := client.New(client.Config{Origin: "me.test", RootCAs: recv.CAPool(), AllowedNetworks: []string{"127.0.0.0/8"}, RetryDelay: 5 * time.Millisecond}, key, res, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, k: k, addr: addr, pool: pool, recv: recv, cl: cl}
}

func (e *env) run(t *testing.T, backoff time.Duration) {
	t.Helper()
	e.reg = prometheus.NewRegistry()
	s, err := sender.New(sender.Config{OutboundPartitions: 4, Queue: queue.Config{Origin: "me.test", BackoffInitial: backoff, BackoffMax: 10 * backoff, CatchUpInterval: 20 * time.Millisecond}},
		e.pool, e.cl, slog.New(slog.DiscardHandler), e.reg)
	if err != nil {
		t.Fatal(err)
	}
	g, err := runtime.New(runtime.Config{Brokers: []string{e.addr}, GroupID: e.k.Group("sender"), Topics: []string{e.k.Topic("out")}, DeadLetterTopic: e.k.Topic("dead"), CommitInterval: 20 * time.Millisecond},
		s, slog.New(slog.DiscardHandler), e.reg)
	if err != nil {
		t.Fatal(err)
	}
	runMember(t, s, g)
}

// runMember runs the sender s and its group member g beside the test until
// stop is called or the test ends, both cancelled at once; an error of either
// (other than its cancellation) fails the test.
func runMember(t *testing.T, s *sender.Sender, g *runtime.Group) (stop func() error) {
	t.Helper()
	return testenv.Background(t, "sender member", func(ctx context.Context) error {
		eg, ctx := errgroup.WithContext(ctx)
		eg.Go(func() error {
			if err := s.Run(ctx); err != nil {
				return fmt.Errorf("sender: %w", err)
			}
			return nil
		})
		eg.Go(func() error {
			if err := g.Run(ctx); err != nil {
				return fmt.Errorf("sender group: %w", err)
			}
			return nil
		})
		return eg.Wait()
	})
}

// publish persists an event (for catch-up) and writes its outbound record.
func (e *env) publish(t *testing.T, dest, room string, n int) string {
	t.Helper()
	id := fmt.Sprintf("$%043d", n)
	pdu := json.RawMessage(fmt.Sprintf(`{"room_id":%q,"sender":"@a:me.test","type":"m.room.message","content":{"n":%d}}`, room, n))
	pos, err := outbox.PersistBatch(context.Background(), e.pool, []outbox.EventWithDeltas{{Event: outbox.Event{EventID: id, RoomID: room, RoomVersion: "10", Sender: "@a:me.test", Type: "m.room.message", PDU: pdu}}})
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := schema.OutboundRecord{V: 1, Kind: schema.KindPDU, Destination: dest, RoomID: room, EventID: id, Position: pos[0], RoomVersion: "10", PDU: pdu}.Marshal()
	w := &kafka.Writer{Addr: kafka.TCP(e.addr), Topic: e.k.Topic("out"), RequiredAcks: kafka.RequireAll, Balancer: &kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte(dest), Value: rec}); err != nil {
		t.Fatal(err)
	}
	return string(pdu)
}

func TestDeliversInOrderInTransactionsOfAtMost50PDUs(t *testing.T) {
	e := setup(t, "a.test", "b.test")
	var want []string
	for i := 0; i < 120; i++ {
		want = append(want, e.publish(t, "a.test", "!r:me.test", i))
	}
	e.publish(t, "b.test", "!r:me.test", 1000)
	e.run(t, time.Minute)
	testenv.Eventually(t, 30*time.Second, "120 PDUs at a.test", func() bool { return len(e.recv.PDUs("a.test")) >= 120 })
	got := e.recv.PDUs("a.test")
	for i := range want {
		if string(got[i]) != want[i] {
			t.Fatalf("PDU %d differs or out of order: %s", i, got[i])
		}
	}
	for _, tx := range e.recv.Transactions("a.test") {
		if len(tx.PDUs) > 50 {
			t.Fatalf("transaction with %d PDUs", len(tx.PDUs))
		}
	}
	if e.recv.ConcurrentRejections() != 0 {
		t.Fatal("overlapping transactions")
	}
}

func TestForbiddenDestinationBacksOffAndCatchesUp(t *testing.T) {
	e := setup(t, "a.test")
	e.recv.SetFault("a.test", testreceiver.Fault{Status: 403})
	e.run(t, 300*time.Millisecond)
	e.publish(t, "a.test", "!r1:me.test", 1)
	testenv.Eventually(t, 20*time.Second, "backoff persisted", func() bool {
		return e.retryInterval("a.test") > 0
	})
	e.publish(t, "a.test", "!r1:me.test", 2)
	last1 := e.publish(t, "a.test", "!r1:me.test", 3)
	last2 := e.publish(t, "a.test", "!r2:me.test", 4)
	testenv.Eventually(t, 20*time.Second, "catch-up rows for both rooms", func() bool {
		var n int
		if err := e.pool.QueryRow(context.Background(), "SELECT count(*) FROM sender_catchup WHERE destination='a.test'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 2
	})
	e.recv.ClearFault("a.test")
	testenv.Eventually(t, 30*time.Second, "catch-up delivered the latest event of each room", func() bool {
		got := map[string]bool{}
		for _, p := range e.recv.PDUs("a.test") {
			got[string(p)] = true
		}
		return got[last1] && got[last2]
	})
	if n := len(e.recv.PDUs("a.test")); n != 2 {
		t.Fatalf("%d PDUs delivered by catch-up, want 2 (one per room)", n)
	}
	for _, tx := range e.recv.Transactions("a.test") {
		if len(tx.PDUs) != 1 {
			t.Fatalf("catch-up transaction with %d PDUs, want one room per transaction", len(tx.PDUs))
		}
	}
	last := e.publish(t, "a.test", "!r1:me.test", 5)
	testenv.Eventually(t, 20*time.Second, "live again", func() bool {
		p := e.recv.PDUs("a.test")
		return len(p) == 3 && string(p[2]) == last
	})
}

func TestRecordWhoseKeyIsNotItsDestinationIsDeadLettered(t *testing.T) {
	e := setup(t, "a.test", "b.test")
	pdu := json.RawMessage(`{"room_id":"!r:me.test","sender":"@a:me.test","type":"m.room.message","content":{}}`)
	rec, _ := schema.OutboundRecord{V: 1, Kind: schema.KindPDU, Destination: "b.test", RoomID: "!r:me.test", EventID: "$mismatch", Position: 1, RoomVersion: "10", PDU: pdu}.Marshal()
	w := &kafka.Writer{Addr: kafka.TCP(e.addr), Topic: e.k.Topic("out"), RequiredAcks: kafka.RequireAll, Balancer: &kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte("a.test"), Value: rec}); err != nil {
		t.Fatal(err)
	}
	want := e.publish(t, "a.test", "!r:me.test", 2) // behind it, in the same partition
	e.run(t, time.Minute)
	testenv.Eventually(t, 30*time.Second, "the record behind it delivered", func() bool { return len(e.recv.PDUs("a.test")) == 1 })
	if got := string(e.recv.PDUs("a.test")[0]); got != want {
		t.Fatalf("delivered %s to a.test, want only the well-keyed record", got)
	}
	if n := len(e.recv.PDUs("b.test")); n != 0 {
		t.Fatalf("sent %d PDUs to the destination named by a record keyed for another", n)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{e.addr}, Topic: e.k.Topic("dead"), Partition: (&kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: []byte("a.test")}, 0, 1, 2, 3)})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := r.ReadMessage(ctx)
	if err != nil {
		t.Fatalf("no dead letter: %v", err)
	}
	if !bytes.Equal(m.Value, rec) {
		t.Fatalf("dead letter %s, want the mis-keyed record", m.Value)
	}
	testenv.Eventually(t, 10*time.Second, "dead letter counted", func() bool {
		return e.counter(t, "fedpipe_consumer_records_deadlettered_total", "group", e.k.Group("sender")) == 1
	})
}

// A pdu record listing several destinations of its partition reaches each of
// them once; one that lists a destination of another partition (which
// another member may own) is dead-lettered and sends nothing.
func TestRecordOfSeveralDestinationsReachesEachOnce(t *testing.T) {
	partitionOf := func(d string) int {
		return (&kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: []byte(d)}, 0, 1, 2, 3)
	}
	byPart := map[int][]string{}
	for i := 0; len(byPart[0]) < 3 || len(byPart[1]) < 1; i++ {
		d := fmt.Sprintf("d%d.test", i)
		byPart[partitionOf(d)] = append(byPart[partitionOf(d)], d)
	}
	same, other := byPart[0][:3], byPart[1][0]
	e := setup(t, append(slices.Clone(same), other)...)
	w := &kafka.Writer{Addr: kafka.TCP(e.addr), Topic: e.k.Topic("out"), RequiredAcks: kafka.RequireAll, Balancer: &kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond}
	defer w.Close()
	write := func(n int, dests []string) string {
		id := fmt.Sprintf("$%043d", n)
		pdu := json.RawMessage(fmt.Sprintf(`{"room_id":"!r:me.test","sender":"@a:me.test","type":"m.room.message","content":{"n":%d}}`, n))
		rec, err := schema.OutboundRecord{V: 1, Kind: schema.KindPDU, Destination: dests[0], Destinations: dests,
			RoomID: "!r:me.test", EventID: id, Position: int64(n), RoomVersion: "10", PDU: pdu}.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte(dests[0]), Value: rec}); err != nil {
			t.Fatal(err)
		}
		return string(pdu)
	}
	write(1, []string{same[0], same[1], other}) // poison: other is not of this partition
	want := write(2, same)
	e.run(t, time.Minute)
	testenv.Eventually(t, 30*time.Second, "the good record at each of its destinations", func() bool {
		for _, d := range same {
			if len(e.recv.PDUs(d)) == 0 {
				return false
			}
		}
		return true
	})
	testenv.Eventually(t, 10*time.Second, "the bad record dead-lettered", func() bool {
		return e.counter(t, "fedpipe_consumer_records_deadlettered_total", "group", e.k.Group("sender")) == 1
	})
	for _, d := range same {
		if got := e.recv.PDUs(d); len(got) != 1 || string(got[0]) != want {
			t.Errorf("%s got %d PDUs (%s), want the second record's once", d, len(got), got)
		}
	}
	if n := len(e.recv.PDUs(other)); n != 0 {
		t.Errorf("%s, of another partition, got %d PDUs from a record of partition 0", other, n)
	}
}
