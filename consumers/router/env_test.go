package router_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/consumers/router"
	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

const (
	ourServer     = "hs.test"
	roomTopic     = "fedpipe.room"
	presenceTopic = "fedpipe.presence"
	typingTopic   = "fedpipe.typing"
	receiptsTopic = "fedpipe.receipts"
	outboundTopic = "fedpipe.outbound"
	deadTopic     = "fedpipe.deadletter"
	outParts      = 4
)

// env is a broker with the router's topics and a migrated database.
type env struct {
	cluster *kfake.Cluster
	addr    string
	pool    *pgxpool.Pool
	log     *slog.Logger
	// reg is the metrics registry of the last router runRouter started.
	reg *prometheus.Registry
}

func newEnv(t testing.TB) *env {
	t.Helper()
	cluster, addr := testenv.Broker(t)
	for name, parts := range map[string]int32{roomTopic: 3, presenceTopic: 3, typingTopic: 3, receiptsTopic: 3, outboundTopic: outParts, deadTopic: 1} {
		if err := cluster.CreateTopic(name, parts, nil); err != nil {
			t.Fatalf("creating %s: %v", name, err)
		}
	}
	pool := testenv.Pool(t, testenv.Database(t))
	if err := schema.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(&testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return &env{cluster: cluster, addr: addr, pool: pool, log: log}
}

type testWriter struct{ t testing.TB }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (e *env) writer(topic string) *kafka.Writer {
	return &kafka.Writer{Addr: kafka.TCP(e.addr), Topic: topic, Balancer: &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: 2 * time.Millisecond, BatchSize: 1000}
}

// publish writes room records in order (one synchronous batch keeps per-key order).
func (e *env) publish(t testing.TB, msgs []kafka.Message) {
	t.Helper()
	w := e.writer(roomTopic)
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("publishing %d room records: %v", len(msgs), err)
	}
}

// runRouter runs a router group member until the returned stop is called; stop
// fails the test if the member failed for any reason but being stopped.
func (e *env) runRouter(t testing.TB, group string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	reg := prometheus.NewRegistry()
	e.reg = reg
	w := e.writer(outboundTopic)
	dead := e.writer(deadTopic)
	out := runtime.NewBatchWriter(w, 200, 2*time.Millisecond, e.log, reg, runtime.WithDeadLetters(dead, outboundTopic, "router", "router-test"))
	r, err := router.New(router.Config{ServerName: ourServer, Prefix: "fedpipe", Instance: "router-test", OutboundPartitions: outParts,
		Brokers: []string{e.addr}, GroupID: group, TypingPing: typingPing, TypingTick: 20 * time.Millisecond}, e.pool, out, e.log, reg)
	if err != nil {
		t.Fatal(err)
	}
	grp, err := runtime.New(runtime.Config{Brokers: []string{e.addr}, GroupID: group, Topics: []string{roomTopic, presenceTopic, typingTopic, receiptsTopic},
		DeadLetterTopic: deadTopic, Instance: "router-test"}, r, e.log, reg)
	if err != nil {
		t.Fatal(err)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return out.Run(gctx) })
	g.Go(func() error { return grp.Run(gctx) })
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("router stopped with %v", err)
			}
			_ = w.Close()
			_ = dead.Close()
		})
	}
	t.Cleanup(stop)
	return stop
}

// delivery is one record read back from fedpipe.outbound.
type delivery struct {
	dest, roomID, eventID string
	position              int64
	pdu                   string
	partition             int
	offset                int64
	headers               map[string]string
}

// collector reads every partition of a topic from the start until the test ends.
type collector struct {
	topic string
	mu    sync.Mutex
	msgs  []kafka.Message
	next  map[int]int64 // partition → offset after the last read
	// lagging describes the last partition found behind, for failure messages.
	lagging string
}

func (e *env) collect(t *testing.T, topic string, partitions int) *collector {
	t.Helper()
	c := &collector{topic: topic, next: map[int]int64{}}
	t.Cleanup(func() {
		if t.Failed() && c.lagging != "" {
			t.Logf("collector: %s", c.lagging)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	g, gctx := errgroup.WithContext(ctx)
	for p := range partitions {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{e.addr}, Topic: topic, Partition: p, MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 500 * time.Millisecond})
		g.Go(func() error {
			defer r.Close()
			for {
				m, err := r.ReadMessage(gctx)
				if err != nil {
					if gctx.Err() != nil {
						return nil
					}
					return fmt.Errorf("reading %s/%d: %w", topic, p, err)
				}
				c.mu.Lock()
				c.msgs = append(c.msgs, m)
				c.next[m.Partition] = m.Offset + 1
				c.mu.Unlock()
			}
		})
	}
	t.Cleanup(func() {
		cancel()
		if err := g.Wait(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// readAll reports whether the collector has read every record written so far.
func (c *collector) readAll(t testing.TB, e *env, partitions int) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var reqs []kafka.OffsetRequest
	for p := range partitions {
		reqs = append(reqs, kafka.LastOffsetOf(p))
	}
	lo, err := (&kafka.Client{Addr: kafka.TCP(e.addr)}).ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{c.topic: reqs}})
	if err != nil {
		t.Logf("listing offsets: %v", err)
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range lo.Topics[c.topic] {
		if p.Error != nil || c.next[p.Partition] < p.LastOffset {
			c.lagging = fmt.Sprintf("partition %d read to %d of %d (err %v)", p.Partition, c.next[p.Partition], p.LastOffset, p.Error)
			return false
		}
	}
	return true
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

func (c *collector) snapshot() []kafka.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.msgs)
}

// deliveries decodes the outbound records read so far into one delivery per
// (record, destination it lists), failing on any that breaks the record
// contract, including a destination listed in another partition's record.
func (c *collector) deliveries(t *testing.T) []delivery {
	t.Helper()
	var out []delivery
	for _, m := range c.snapshot() {
		if isPresence(m) {
			continue // presence_test.go reads those
		}
		if err := schema.ValidateRecord("outbound", m.Value); err != nil {
			t.Fatalf("outbound record breaks its schema: %v\n%s", err, m.Value)
		}
		rec, err := schema.DecodeOutboundRecord(m.Value)
		if err != nil {
			t.Fatalf("decoding outbound record: %v", err)
		}
		if string(m.Key) != rec.Destination {
			t.Fatalf("outbound record keyed %q for destination %q", m.Key, rec.Destination)
		}
		h := map[string]string{}
		for _, x := range m.Headers {
			h[x.Key] = string(x.Value)
		}
		if h["kind"] != "pdu" || h["schema"] != "1" || h["position"] != strconv.FormatInt(rec.Position, 10) || h["instance"] != "router-test" {
			t.Fatalf("outbound headers %v for position %d", h, rec.Position)
		}
		for _, d := range rec.Targets() {
			if p := (&kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: []byte(d)}, 0, 1, 2, 3); p != m.Partition {
				t.Fatalf("outbound record in partition %d lists %s, of partition %d", m.Partition, d, p)
			}
			out = append(out, delivery{dest: d, roomID: rec.RoomID, eventID: rec.EventID, position: rec.Position,
				pdu: string(rec.PDU), partition: m.Partition, offset: m.Offset, headers: h})
		}
	}
	return out
}

// caughtUp reports whether group has committed the end of every room partition:
// the runtime commits an offset only once its record is fully handled, so every
// outbound record of the records before it has been acknowledged by then.
func (e *env) caughtUp(t testing.TB, group string) bool {
	t.Helper()
	return e.caughtUpOn(t, group, roomTopic)
}

// caughtUpOn is caughtUp on another of the router's three-partition topics.
func (e *env) caughtUpOn(t testing.TB, group, roomTopic string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client := &kafka.Client{Addr: kafka.TCP(e.addr)}
	parts := []int{0, 1, 2}
	lo, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{
		roomTopic: {kafka.LastOffsetOf(0), kafka.LastOffsetOf(1), kafka.LastOffsetOf(2)}}})
	if err != nil {
		t.Logf("listing offsets: %v", err)
		return false
	}
	of, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{roomTopic: parts}})
	if err != nil {
		t.Logf("fetching committed offsets: %v", err)
		return false
	}
	end := map[int]int64{}
	for _, p := range lo.Topics[roomTopic] {
		end[p.Partition] = p.LastOffset
	}
	committed := 0
	for _, p := range of.Topics[roomTopic] {
		if end[p.Partition] == 0 { // an empty partition has nothing to commit
			committed++
			continue
		}
		if p.Error != nil || p.CommittedOffset != end[p.Partition] {
			return false
		}
		committed++
	}
	return committed == len(parts)
}

// stream builds room records the way the relay publishes them: for each
// position the event, then its state delta.
type stream struct {
	pos      int64
	msgs     []kafka.Message
	pdus     map[string]string // event ID → PDU bytes
	position map[string]int64  // event ID → position
	members  map[string]string // room + user → membership, for prev_membership
}

func newStream() *stream {
	return &stream{pdus: map[string]string{}, position: map[string]int64{}, members: map[string]string{}}
}

// send appends an event by sender (its origin is the sender's server) and, for
// a state event, its delta; membership is the new membership of a member event.
func (s *stream) send(t *testing.T, room, sender, typ string, stateKey *string, membership string) string {
	t.Helper()
	s.pos++
	id := fmt.Sprintf("$e%d", s.pos)
	// Spacing and HTML characters a re-encoder would change.
	pdu := fmt.Sprintf(`{"type": %q,  "sender": %q, "room_id": %q, "content": {"body": "<b>&</b> %d", "membership": %q}}`,
		typ, sender, room, s.pos, membership)
	ev := schema.RoomRecord{V: 1, Kind: schema.KindEvent, Position: s.pos, RoomID: room, RoomVersion: "10", EventID: id,
		Sender: sender, Origin: mxid.ServerPart(sender), Type: typ, StateKey: stateKey, PDU: []byte(pdu)}
	s.add(t, room, ev)
	s.pdus[id], s.position[id] = pdu, s.pos
	if stateKey != nil {
		d := schema.RoomRecord{V: 1, Kind: schema.KindStateDelta, Position: s.pos, RoomID: room, Type: typ, StateKey: stateKey, EventID: id}
		if typ == "m.room.member" {
			d.Membership, d.PrevMembership = membership, s.members[room+*stateKey]
			s.members[room+*stateKey] = membership
		}
		s.add(t, room, d)
	}
	return id
}

func (s *stream) add(t *testing.T, room string, rec schema.RoomRecord) {
	t.Helper()
	v, err := rec.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := schema.ValidateRecord("room", v); err != nil {
		t.Fatalf("test record breaks the schema: %v", err)
	}
	s.msgs = append(s.msgs, kafka.Message{Key: []byte(room), Value: v})
}

func strp(s string) *string { return &s }

// pairs counts deliveries per "event → destination".
func pairs(ds []delivery) map[string]int {
	m := map[string]int{}
	for _, d := range ds {
		m[d.eventID+" → "+d.dest]++
	}
	return m
}
