package runtime_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// recorder is a Stage that records what it handles and when partitions are owned.
type recorder struct {
	mu      sync.Mutex
	member  string
	handled map[string]int // "partition/offset" → times
	hold    func(m kafka.Message) bool
	held    []func()
	poison  func(m kafka.Message) bool
	owners  *owners
	opened  int
}

// owners tracks which member owns each partition, failing on overlap.
type owners struct {
	mu      sync.Mutex
	current map[int]string
	overlap []string
}

func (o *owners) open(p int, member string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if cur, ok := o.current[p]; ok {
		o.overlap = append(o.overlap, fmt.Sprintf("partition %d opened by %s while owned by %s", p, member, cur))
	}
	o.current[p] = member
}

// count is how many partitions member owns now.
func (o *owners) count(member string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, m := range o.current {
		if m == member {
			n++
		}
	}
	return n
}

func (o *owners) close(p int, member string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.current[p] == member {
		delete(o.current, p)
	}
}

type handler struct {
	r *recorder
	p int
}

func (r *recorder) Open(_ context.Context, _ string, p int) (runtime.PartitionHandler, error) {
	r.mu.Lock()
	r.opened++
	r.mu.Unlock()
	if r.owners != nil {
		r.owners.open(p, r.member)
	}
	return &handler{r: r, p: p}, nil
}

func (h *handler) Handle(_ context.Context, m kafka.Message, done func()) error {
	h.r.mu.Lock()
	defer h.r.mu.Unlock()
	if h.r.poison != nil && h.r.poison(m) {
		return runtime.Poison(errors.New("cannot decode"))
	}
	h.r.handled[fmt.Sprintf("%d/%d", m.Partition, m.Offset)]++
	if h.r.hold != nil && h.r.hold(m) {
		h.r.held = append(h.r.held, done)
		return nil
	}
	done()
	return nil
}

func (h *handler) Close(context.Context) error {
	if h.r.owners != nil {
		time.Sleep(20 * time.Millisecond) // widen the window an overlap would need
		h.r.owners.close(h.p, h.r.member)
	}
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.handled)
}

func newRecorder(member string) *recorder {
	return &recorder{member: member, handled: map[string]int{}}
}

func produce(t *testing.T, addr, topic string, n int) {
	t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(addr), Topic: topic, RequiredAcks: kafka.RequireAll, Balancer: &kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond}
	defer w.Close()
	var msgs []kafka.Message
	for i := 0; i < n; i++ {
		msgs = append(msgs, kafka.Message{Key: []byte(strconv.Itoa(i)), Value: []byte(fmt.Sprintf(`{"n":%d}`, i))})
	}
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
}

// setup creates the test's input topic k.Topic("in") of the given partitions
// and its dead-letter topic k.Topic("dead") on kfake or Apache Kafka.
func setup(t *testing.T, partitions int) *testenv.Kafka {
	t.Helper()
	k := testenv.NewKafka(t, kfake.GroupMinSessionTimeout(100*time.Millisecond))
	k.CreateTopic(t, "in", partitions, nil)
	k.CreateTopic(t, "dead", 1, nil)
	return k
}

func member(t *testing.T, k *testenv.Kafka, stage runtime.Stage, deadTopic string) (stop func() error) {
	t.Helper()
	return memberWith(t, k, stage, deadTopic, nil)
}

// memberWith is member with its configuration adjusted.
func memberWith(t *testing.T, k *testenv.Kafka, stage runtime.Stage, deadTopic string, adjust func(*runtime.Config)) (stop func() error) {
	t.Helper()
	cfg := runtime.Config{Brokers: []string{k.Addr}, GroupID: k.Group("g"), Topics: []string{k.Topic("in")}, DeadLetterTopic: deadTopic,
		CommitInterval: 20 * time.Millisecond, SessionTimeout: 2 * time.Second, RebalanceTimeout: 2 * time.Second, HeartbeatInterval: 200 * time.Millisecond}
	if adjust != nil {
		adjust(&cfg)
	}
	g, err := runtime.New(cfg, stage, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	// A clean stop returns nil from Run (a cancelled member leaves its group
	// and returns no error); when the test ends, an error fails it, also for
	// the members whose stop the test does not check itself.
	return testenv.Background(t, "group member", g.Run)
}

func TestHandlesAndCommits(t *testing.T) {
	k := setup(t, 3)
	produce(t, k.Addr, k.Topic("in"), 100)
	r := newRecorder("a")
	stop := member(t, k, r, k.Topic("dead"))
	testenv.Eventually(t, 20*time.Second, "100 records handled", func() bool { return r.count() == 100 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	r2 := newRecorder("b")
	stop2 := member(t, k, r2, k.Topic("dead"))
	produce(t, k.Addr, k.Topic("in"), 10)
	testenv.Eventually(t, 20*time.Second, "10 new records handled and committed", func() bool {
		return r2.count() >= 10 && committedToEnd(t, k, k.Group("g"), k.Topic("in"), 3)
	})
	if n := r2.count(); n != 10 {
		t.Fatalf("after restart %d records handled, want only the 10 new ones", n)
	}
	if err := stop2(); err != nil {
		t.Fatal(err)
	}
}

// committedToEnd reports whether group has committed every partition of topic
// up to its end: everything handled, nothing more on its way.
func committedToEnd(t *testing.T, k *testenv.Kafka, group, topic string, partitions int) bool {
	t.Helper()
	client := &kafka.Client{Addr: kafka.TCP(k.Addr), Timeout: 5 * time.Second}
	var reqs []kafka.OffsetRequest
	var ids []int
	for p := range partitions {
		reqs, ids = append(reqs, kafka.LastOffsetOf(p)), append(ids, p)
	}
	ends, err := client.ListOffsets(context.Background(), &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		t.Fatalf("listing offsets: %v", err)
	}
	got, err := client.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: ids}})
	if err != nil {
		t.Fatalf("fetching offsets: %v", err)
	}
	committed := map[int]int64{}
	for _, p := range got.Topics[topic] {
		committed[p.Partition] = p.CommittedOffset
	}
	for _, p := range ends.Topics[topic] {
		if p.LastOffset > 0 && committed[p.Partition] != p.LastOffset {
			return false
		}
	}
	return true
}

func TestWatermarkHoldsBackCommitUntilDone(t *testing.T) {
	k := setup(t, 1)
	produce(t, k.Addr, k.Topic("in"), 20)
	r := newRecorder("a")
	r.hold = func(m kafka.Message) bool { return m.Offset == 5 } // record 5 never finishes
	stop := member(t, k, r, k.Topic("dead"))
	testenv.Eventually(t, 20*time.Second, "20 records handled", func() bool { return r.count() == 20 })
	time.Sleep(100 * time.Millisecond) // a few commit intervals
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	r2 := newRecorder("b")
	stop2 := member(t, k, r2, k.Topic("dead"))
	defer stop2()
	testenv.Eventually(t, 20*time.Second, "redelivery from the held record", func() bool { return r2.count() == 15 })
	r2.mu.Lock()
	defer r2.mu.Unlock()
	if r2.handled["0/4"] != 0 || r2.handled["0/5"] != 1 || r2.handled["0/19"] != 1 {
		t.Fatalf("redelivered %v, want offsets 5..19 only", r2.handled)
	}
}

// One record in flight for long (a slow destination's transaction) holds
// back the commit but not the partition: records done after it do not count
// against MaxInFlight, so the partition's other records keep flowing.
func TestALongHeldRecordDoesNotPinThePartition(t *testing.T) {
	k := setup(t, 1)
	produce(t, k.Addr, k.Topic("in"), 200)
	r := newRecorder("a")
	r.hold = func(m kafka.Message) bool { return m.Offset == 5 }
	memberWith(t, k, r, k.Topic("dead"), func(c *runtime.Config) { c.MaxInFlight = 10 })
	testenv.Eventually(t, 20*time.Second, "all 200 records handled past the held one (MaxInFlight 10)", func() bool { return r.count() == 200 })
	if committedToEnd(t, k, k.Group("g"), k.Topic("in"), 1) {
		t.Fatal("committed past a record not done")
	}
}

func TestPoisonGoesToDeadLetterAndPartitionContinues(t *testing.T) {
	k := setup(t, 1)
	produce(t, k.Addr, k.Topic("in"), 10)
	r := newRecorder("a")
	r.poison = func(m kafka.Message) bool { return m.Offset == 3 }
	stop := member(t, k, r, k.Topic("dead"))
	defer stop()
	testenv.Eventually(t, 20*time.Second, "the other 9 records", func() bool { return r.count() == 9 })
	rd := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{k.Addr}, Topic: k.Topic("dead"), Partition: 0, MaxWait: 500 * time.Millisecond})
	defer rd.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := rd.FetchMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h := map[string]string{}
	for _, x := range m.Headers {
		h[x.Key] = string(x.Value)
	}
	if h["source_topic"] != k.Topic("in") || h["source_partition"] != "0" || h["source_offset"] != "3" || h["deadletter_reason"] == "" || string(m.Value) != `{"n":3}` {
		t.Fatalf("dead letter %s headers %v", m.Value, h)
	}
}

func TestDeadLetterWriteFailureStopsTheMember(t *testing.T) {
	k := setup(t, 1)
	produce(t, k.Addr, k.Topic("in"), 3)
	r := newRecorder("a")
	r.poison = func(m kafka.Message) bool { return m.Offset == 1 }
	g, err := runtime.New(runtime.Config{Brokers: []string{k.Addr}, GroupID: k.Group("g"), Topics: []string{k.Topic("in")}, DeadLetterTopic: k.Topic("no-such-topic"),
		CommitInterval: 20 * time.Millisecond}, r, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err = g.Run(ctx)
	if err == nil || ctx.Err() != nil {
		t.Fatalf("Run = %v (ctx %v), want the dead-letter error", err, ctx.Err())
	}
	if r.count() != 1 {
		t.Fatalf("handled %d records; the partition must stop at the poison record", r.count())
	}
}

func TestRebalanceNeverOverlapsOwnership(t *testing.T) {
	k := setup(t, 6)
	own := &owners{current: map[int]string{}}
	a, b, c := newRecorder("a"), newRecorder("b"), newRecorder("c")
	for _, r := range []*recorder{a, b, c} {
		r.owners = own
	}
	produce(t, k.Addr, k.Topic("in"), 300)
	stopA := member(t, k, a, k.Topic("dead"))
	member(t, k, b, k.Topic("dead"))
	total := func() int {
		seen := map[string]bool{}
		for _, r := range []*recorder{a, b, c} {
			r.mu.Lock()
			for k := range r.handled {
				seen[k] = true
			}
			r.mu.Unlock()
		}
		return len(seen)
	}
	testenv.Eventually(t, 30*time.Second, "first records", func() bool { return total() >= 100 })
	member(t, k, c, k.Topic("dead")) // a third member joins
	produce(t, k.Addr, k.Topic("in"), 300)
	// Every member owns partitions before one leaves, so the leave hands
	// partitions over under traffic (not a member that owned nothing).
	testenv.Eventually(t, 30*time.Second, "a, b and c each own partitions", func() bool {
		return own.count("a") > 0 && own.count("b") > 0 && own.count("c") > 0
	})
	if err := stopA(); err != nil { // and one leaves
		t.Fatalf("member a stopped with %v", err)
	}
	produce(t, k.Addr, k.Topic("in"), 300)
	testenv.Eventually(t, 60*time.Second, "all 900 records", func() bool { return total() == 900 })
	testenv.Eventually(t, 30*time.Second, "b and c own all 6 partitions", func() bool {
		return own.count("a") == 0 && own.count("b")+own.count("c") == 6
	})
	own.mu.Lock()
	defer own.mu.Unlock()
	if len(own.overlap) > 0 {
		t.Fatalf("ownership overlapped: %v", own.overlap)
	}
}

type slowWriter struct {
	mu    sync.Mutex
	got   []string
	fails int
}

func (w *slowWriter) WriteMessages(_ context.Context, msgs ...kafka.Message) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fails > 0 {
		w.fails--
		return errors.New("broker unavailable")
	}
	for _, m := range msgs {
		w.got = append(w.got, string(m.Value))
	}
	return nil
}

func TestBatchWriterOrderAndDone(t *testing.T) {
	w := &slowWriter{fails: 2}
	b := runtime.NewBatchWriter(w, 7, time.Millisecond, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	testenv.Background(t, "batch writer", b.Run)
	ctx := context.Background()
	var mu sync.Mutex
	var doneOrder []int
	for i := 0; i < 50; i++ {
		msgs := []kafka.Message{{Value: []byte(fmt.Sprint(i, "a"))}, {Value: []byte(fmt.Sprint(i, "b"))}}
		if err := b.Write(ctx, msgs, func() { mu.Lock(); doneOrder = append(doneOrder, i); mu.Unlock() }); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 10*time.Second, "all writes done", func() bool { mu.Lock(); defer mu.Unlock(); return len(doneOrder) == 50 })
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.got) != 100 {
		t.Fatalf("%d records written, want 100 (failures retried, nothing dropped)", len(w.got))
	}
	for i := 0; i < 50; i++ {
		if w.got[2*i] != fmt.Sprint(i, "a") || w.got[2*i+1] != fmt.Sprint(i, "b") || doneOrder[i] != i {
			t.Fatalf("order broken at %d: %v / %v", i, w.got[2*i:2*i+2], doneOrder[i])
		}
	}
}

// Back-pressure: with every record held, a partition fetches MaxInFlight
// records and waits; each record done lets one more in, and once all are
// done the partition goes on to the end.
func TestMaxInFlightBoundsAPartitionUntilRecordsAreDone(t *testing.T) {
	k := setup(t, 1)
	produce(t, k.Addr, k.Topic("in"), 30)
	r := newRecorder("a")
	r.hold = func(kafka.Message) bool { return true }
	memberWith(t, k, r, k.Topic("dead"), func(c *runtime.Config) { c.MaxInFlight = 5 })
	release := func(n int) {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, done := range r.held[:n] {
			done()
		}
		r.held = r.held[n:]
	}
	testenv.Eventually(t, 20*time.Second, "5 records in flight", func() bool { return r.count() == 5 })
	time.Sleep(100 * time.Millisecond) // a few commit intervals: no sixth record comes
	if n := r.count(); n != 5 {
		t.Fatalf("%d records handed with 5 in flight, want 5 (MaxInFlight)", n)
	}
	release(2)
	testenv.Eventually(t, 20*time.Second, "2 more records once 2 are done", func() bool { return r.count() == 7 })
	testenv.Eventually(t, 20*time.Second, "all 30 records handled and committed as they are done", func() bool {
		r.mu.Lock()
		n := len(r.held)
		r.mu.Unlock()
		release(n)
		return r.count() == 30 && committedToEnd(t, k, k.Group("g"), k.Topic("in"), 1)
	})
}
