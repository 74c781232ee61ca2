package queue_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// transport records transactions and fails destinations on demand.
type transport struct {
	mu       sync.Mutex
	got      map[string][]*txn.Transaction
	failing  map[string]error
	inFlight map[string]int
	overlap  atomic.Int64
	delay    atomic.Int64      // nanoseconds
	attempts map[string]int    // "destination id" → sends
	flaky    map[string]int    // destination → sends still to fail with errTransient
	rejected map[string]string // event id → per-PDU error in the 200 answer
	held     chan struct{}     // while set, sends wait until it is closed (a slow destination)
}

// sendError is a stub failure carrying its outcome, as the federation
// client's errors do.
type sendError struct {
	outcome txn.Outcome
	msg     string
}

func (e *sendError) Error() string        { return e.msg }
func (e *sendError) Outcome() txn.Outcome { return e.outcome }

var (
	errDown      error = &sendError{txn.Backoff, "destination down"}
	errTransient error = &sendError{txn.Retry, "503, retried within the request"}
	errBad       error = &sendError{txn.Fatal, "400: our transaction is malformed"}
)

func (t *transport) SendTransaction(_ context.Context, tx *txn.Transaction) (txn.Response, error) {
	t.mu.Lock()
	t.inFlight[tx.Destination]++
	if t.inFlight[tx.Destination] > 1 {
		t.overlap.Add(1)
	}
	err := t.failing[tx.Destination]
	if t.flaky[tx.Destination] > 0 {
		t.flaky[tx.Destination]--
		err = errTransient
	}
	if t.attempts != nil {
		t.attempts[tx.Destination+" "+tx.ID]++
	}
	held := t.held
	t.mu.Unlock()
	if held != nil {
		<-held
	}
	if _, berr := tx.Body(); berr != nil && err == nil {
		err = fmt.Errorf("%w: %w", errBad, berr) // as the federation client reports it
	}
	time.Sleep(time.Duration(t.delay.Load()))
	t.mu.Lock()
	defer t.mu.Unlock()
	t.inFlight[tx.Destination]--
	if err != nil {
		return txn.Response{}, err
	}
	t.got[tx.Destination] = append(t.got[tx.Destination], tx)
	resp := txn.Response{PDUs: map[string]txn.PDUResult{}}
	for id, reason := range t.rejected {
		resp.PDUs[id] = txn.PDUResult{Error: reason}
	}
	return resp, nil
}

// attemptsTo lists the transaction ids dest was sent, accepted or not.
func (t *transport) attemptsTo(dest string) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for key := range t.attempts {
		if d, id, _ := strings.Cut(key, " "); d == dest {
			out = append(out, id)
		}
	}
	return out
}

func (t *transport) pdus(dest string) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for _, tx := range t.got[dest] {
		for _, p := range tx.PDUs {
			out = append(out, string(p))
		}
	}
	return out
}

// memStore is an in-memory Store for the domain tests (the PostgreSQL one is
// tested in consumers/sender).
type memStore struct {
	mu      sync.Mutex
	retry   map[string]queue.RetryState
	catchUp map[string]map[string]queue.CatchUp
	pdus    map[string]json.RawMessage  // event id → PDU
	last    map[string]int64            // last successful position
	rooms   map[string]map[string]int64 // per destination, per room, the position accepted
	// stored holds each destination's stored EDUs by kind, in position order.
	stored map[queue.Durable]map[string][]queue.StoredEDU
	// sending holds each destination's stored positions marked as being sent.
	sending map[string]map[int64]bool
}

func (s *memStore) LoadRetry(_ context.Context, d string) (queue.RetryState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.retry[d], nil
}
func (s *memStore) SaveRetry(_ context.Context, d string, r queue.RetryState) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r.Paused = s.retry[d].Paused // the operator's, not the queue's
	s.retry[d] = r
	return nil
}
func (s *memStore) RecordSuccess(_ context.Context, d string, acked []queue.RoomPosition) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == nil {
		s.last = map[string]int64{}
		s.rooms = map[string]map[string]int64{}
	}
	if s.rooms[d] == nil {
		s.rooms[d] = map[string]int64{}
	}
	for _, a := range acked {
		s.last[d] = max(s.last[d], a.Position)
		s.rooms[d][a.RoomID] = max(s.rooms[d][a.RoomID], a.Position)
	}
	return nil
}

func (s *memStore) AckedRooms(_ context.Context, d string) (map[string]int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.rooms[d]), nil
}

// setPaused is what an operator does through the admin API.
func (s *memStore) setPaused(d string, paused bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.retry[d]
	r.Paused = paused
	s.retry[d] = r
}

func (s *memStore) lastSuccess(d string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last[d]
}
func (s *memStore) RecordCatchUp(_ context.Context, d string, rooms []queue.CatchUp) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.catchUp[d] == nil {
		s.catchUp[d] = map[string]queue.CatchUp{}
	}
	for _, c := range rooms {
		if old, ok := s.catchUp[d][c.RoomID]; !ok || c.Position > old.Position {
			s.catchUp[d][c.RoomID] = c
		}
	}
	return nil
}
func (s *memStore) CatchUpRooms(_ context.Context, d string, limit int) ([]queue.CatchUp, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []queue.CatchUp
	for _, c := range s.catchUp[d] {
		c.PDU = s.pdus[c.EventID]
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Position < out[j].Position })
	return out[:min(limit, len(out))], nil
}
func (s *memStore) ClearCatchUp(_ context.Context, d string, c queue.CatchUp) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.catchUp[d][c.RoomID]; ok && cur.Position == c.Position {
		delete(s.catchUp[d], c.RoomID)
	}
	return nil
}
func (s *memStore) DueDestinations(_ context.Context, now time.Time, after string, limit int) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for d, rooms := range s.catchUp {
		if len(rooms) > 0 && !s.retry[d].Failing(now) && d > after {
			out = append(out, d)
		}
	}
	for _, byDest := range s.stored {
		for d, msgs := range byDest {
			if len(msgs) > 0 && len(s.catchUp[d]) == 0 && !slices.Contains(out, d) && !s.retry[d].Failing(now) && d > after {
				out = append(out, d)
			}
		}
	}
	sort.Strings(out)
	return out[:min(limit, len(out))], nil
}

// store keeps EDUs of kind for d, as the sender stage does.
func (s *memStore) store(kind queue.Durable, d string, edus ...queue.StoredEDU) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stored == nil {
		s.stored = map[queue.Durable]map[string][]queue.StoredEDU{}
	}
	if s.stored[kind] == nil {
		s.stored[kind] = map[string][]queue.StoredEDU{}
	}
	s.stored[kind][d] = append(s.stored[kind][d], edus...)
}

func (s *memStore) storedCount(kind queue.Durable, d string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.stored[kind][d])
}

func (s *memStore) StoredEDUs(_ context.Context, d string, kind queue.Durable, after int64, limit, maxBytes int) ([]queue.StoredEDU, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []queue.StoredEDU
	size := 0
	for _, m := range s.stored[kind][d] {
		if m.Position <= after {
			continue
		}
		if len(out) == limit || len(out) > 0 && size+len(m.EDU.Content) > maxBytes {
			break
		}
		size += len(m.EDU.Content)
		out = append(out, m)
	}
	return out, nil
}

func (s *memStore) AckEDUs(_ context.Context, d string, kind queue.Durable, positions []int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stored[kind][d] = slices.DeleteFunc(s.stored[kind][d], func(m queue.StoredEDU) bool { return slices.Contains(positions, m.Position) })
	return nil
}

func (s *memStore) MarkSending(_ context.Context, d string, kind queue.Durable, positions []int64, sending bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sending == nil {
		s.sending = map[string]map[int64]bool{}
	}
	if s.sending[d] == nil {
		s.sending[d] = map[int64]bool{}
	}
	for _, p := range positions {
		if sending {
			s.sending[d][p] = true
		} else {
			delete(s.sending[d], p)
		}
	}
	return nil
}

// marked is dest's positions marked as being sent, in order.
func (s *memStore) marked(d string) []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int64
	for p := range s.sending[d] {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type fixture struct {
	m     *queue.Manager
	tr    *transport
	store *memStore
	clk   *clock
	done  atomic.Int64
	pos   atomic.Int64
	reg   *prometheus.Registry
}

func setup(t *testing.T) *fixture { return setupWith(t, nil) }

// setupWith runs a Manager on the stubs, adjust changing its Config.
func setupWith(t *testing.T, adjust func(*queue.Config)) *fixture {
	t.Helper()
	f := &fixture{
		tr:    &transport{got: map[string][]*txn.Transaction{}, failing: map[string]error{}, inFlight: map[string]int{}, attempts: map[string]int{}, flaky: map[string]int{}},
		store: &memStore{retry: map[string]queue.RetryState{}, catchUp: map[string]map[string]queue.CatchUp{}, pdus: map[string]json.RawMessage{}},
		clk:   &clock{now: time.Unix(1_700_000_000, 0)},
		reg:   prometheus.NewRegistry(),
	}
	f.tr.delay.Store(int64(time.Millisecond))
	cfg := queue.Config{Origin: "me.test", Now: f.clk.Now, Rand: func() float64 { return 0.5 }, CatchUpInterval: 5 * time.Millisecond,
		RetryDelay: 5 * time.Millisecond}
	if adjust != nil {
		adjust(&cfg)
	}
	m, err := queue.NewManager(cfg, f.tr, f.store, slog.New(slog.DiscardHandler), f.reg)
	if err != nil {
		t.Fatal(err)
	}
	f.m = m
	testenv.Background(t, "queue manager", m.Run) // its error fails the test
	testenv.Eventually(t, 5*time.Second, "manager running", func() bool {
		return m.EnqueueEDU(context.Background(), "probe.test", queue.EDU{EDU: txn.EDU{Type: "m.x", Content: json.RawMessage(`{}`)}}, func() {}) == nil
	})
	return f
}

func (f *fixture) pdu(t *testing.T, dest, room string) string {
	t.Helper()
	p := f.pos.Add(1)
	id := fmt.Sprintf("$e%d", p)
	raw := json.RawMessage(fmt.Sprintf(`{"room_id":%q,"n":%d}`, room, p))
	f.store.mu.Lock()
	f.store.pdus[id] = raw
	f.store.mu.Unlock()
	if err := f.m.EnqueuePDU(context.Background(), dest, queue.PDU{RoomID: room, EventID: id, Position: p, JSON: raw}, func() { f.done.Add(1) }); err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

func TestBatchesInOrderOneInFlight(t *testing.T) {
	f := setup(t)
	var want []string
	for i := 0; i < 230; i++ {
		want = append(want, f.pdu(t, "a.test", "!r"))
		f.pdu(t, "b.test", "!r")
	}
	testenv.Eventually(t, 10*time.Second, "all done", func() bool { return f.done.Load() == 460 })
	got := f.tr.pdus("a.test")
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("order or content differs: %d sent, want %d", len(got), len(want))
	}
	f.tr.mu.Lock()
	for _, tx := range f.tr.got["a.test"] {
		if len(tx.PDUs) > txn.MaxPDUs {
			t.Errorf("transaction of %d PDUs", len(tx.PDUs))
		}
	}
	ids := map[string]bool{}
	for _, tx := range f.tr.got["a.test"] {
		if ids[tx.ID] {
			t.Errorf("transaction id %s reused for a new transaction", tx.ID)
		}
		ids[tx.ID] = true
	}
	f.tr.mu.Unlock()
	if n := f.tr.overlap.Load(); n != 0 {
		t.Fatalf("%d overlapping transactions to one destination", n)
	}
}

func TestBackoffCatchUpAndResume(t *testing.T) {
	f := setup(t)
	f.tr.mu.Lock()
	f.tr.failing["a.test"] = errDown
	f.tr.mu.Unlock()
	f.pdu(t, "a.test", "!r1")
	testenv.Eventually(t, 5*time.Second, "failure recorded", func() bool { return f.done.Load() == 1 })
	r, _ := f.store.LoadRetry(context.Background(), "a.test")
	if r.Interval != 10*time.Minute || r.NextAttempt != f.clk.Now().Add(11*time.Minute) { // jitter 0.8+0.5*0.6 = 1.1
		t.Fatalf("backoff %+v", r)
	}
	// While backing off: PDUs go to catch-up, not memory; EDUs are dropped.
	f.pdu(t, "a.test", "!r1")
	last1 := f.pdu(t, "a.test", "!r1")
	last2 := f.pdu(t, "a.test", "!r2")
	if err := f.m.EnqueueEDU(context.Background(), "a.test", queue.EDU{EDU: txn.EDU{Type: "m.typing", Content: json.RawMessage(`{}`)}}, func() { f.done.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if f.done.Load() != 5 || len(f.tr.pdus("a.test")) != 0 {
		t.Fatalf("done %d, sent %d", f.done.Load(), len(f.tr.pdus("a.test")))
	}
	// Due again but still failing: the backoff doubles.
	f.clk.advance(12 * time.Minute)
	testenv.Eventually(t, 5*time.Second, "second failure", func() bool {
		r, _ := f.store.LoadRetry(context.Background(), "a.test")
		return r.Interval == 20*time.Minute
	})
	// Recovered: catch-up sends the latest event of each room, one room per transaction, then live resumes.
	f.tr.mu.Lock()
	delete(f.tr.failing, "a.test")
	f.tr.mu.Unlock()
	f.clk.advance(30 * time.Minute)
	testenv.Eventually(t, 5*time.Second, "catch-up", func() bool { return len(f.tr.pdus("a.test")) == 2 })
	got := f.tr.pdus("a.test")
	sort.Strings(got)
	want := []string{last1, last2}
	sort.Strings(want)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("catch-up sent %v, want the latest per room %v", got, want)
	}
	testenv.Eventually(t, 5*time.Second, "backoff cleared", func() bool {
		r, _ := f.store.LoadRetry(context.Background(), "a.test")
		return r.Interval == 0
	})
	live := f.pdu(t, "a.test", "!r1")
	testenv.Eventually(t, 5*time.Second, "live again", func() bool {
		p := f.tr.pdus("a.test")
		return len(p) == 3 && p[2] == live
	})
}

func TestStopWaitsForInFlight(t *testing.T) {
	f := setup(t)
	f.tr.delay.Store(int64(100 * time.Millisecond))
	for i := 0; i < 120; i++ {
		f.pdu(t, "a.test", "!r")
	}
	testenv.Eventually(t, 5*time.Second, "a transaction in flight", func() bool {
		f.tr.mu.Lock()
		defer f.tr.mu.Unlock()
		return f.tr.inFlight["a.test"] == 1
	})
	if err := f.m.Stop(context.Background(), []string{"a.test"}); err != nil {
		t.Fatal(err)
	}
	f.tr.mu.Lock()
	inFlight := f.tr.inFlight["a.test"]
	f.tr.mu.Unlock()
	if inFlight != 0 {
		t.Fatal("Stop returned while a transaction was in flight")
	}
	if d := f.done.Load(); d >= 120 {
		t.Fatalf("%d items done although the queue was stopped early", d)
	}
}

func TestBackoffDefaultsAreSynapses(t *testing.T) {
	cfg := queue.Config{Origin: "o"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.BackoffInitial != 10*time.Minute || cfg.BackoffMax != 7*24*time.Hour || cfg.BackoffMultiplier != 2 || cfg.JitterMin != 0.8 || cfg.JitterMax != 1.4 {
		t.Fatalf("defaults differ from Synapse's: %+v", cfg)
	}
}

// An idle destination's first transaction waits Config.Linger, so that what
// is queued meanwhile goes in it; a negative Linger sends at once.
func TestLingerGathersAnIdleDestinationsFirstTransaction(t *testing.T) {
	txns := func(linger, gap time.Duration) []int {
		f := setupWith(t, func(c *queue.Config) { c.Linger = linger })
		for i := 0; i < 3; i++ {
			if i > 0 {
				time.Sleep(gap) // the gap between the homeserver's events is what is tested
			}
			f.pdu(t, "l.test", "!r")
		}
		testenv.Eventually(t, 10*time.Second, "all done", func() bool { return f.done.Load() == 3 })
		f.tr.mu.Lock()
		defer f.tr.mu.Unlock()
		var sizes []int
		for _, tx := range f.tr.got["l.test"] {
			sizes = append(sizes, len(tx.PDUs))
		}
		return sizes
	}
	if got := txns(2*time.Second, 20*time.Millisecond); fmt.Sprint(got) != "[3]" {
		t.Errorf("with a 2 s linger, PDUs 20 ms apart went in transactions of %v, want one of 3", got)
	}
	if got := txns(-1, 300*time.Millisecond); fmt.Sprint(got) != "[1 1 1]" {
		t.Errorf("without linger, PDUs 300 ms apart went in transactions of %v, want three of 1", got)
	}
}
