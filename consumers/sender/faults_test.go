package sender_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/consumers/sender"
	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/federation/testreceiver"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// member starts one sender member of the group; stop leaves the group (its
// partitions drain) and returns once its Run has ended.
func (e *env) member(t *testing.T, backoff time.Duration) (stop func()) {
	t.Helper()
	return e.memberOf(t, "sender", backoff)
}

// memberOf starts a member of the group named group: members of two groups
// both own every outbound partition, as a member the group has expired while
// it still sends and the member that took over would.
func (e *env) memberOf(t *testing.T, group string, backoff time.Duration) (stop func()) {
	t.Helper()
	s, err := sender.New(sender.Config{OutboundPartitions: 4, Queue: queue.Config{Origin: "me.test",
		BackoffInitial: backoff, BackoffMax: 10 * backoff, CatchUpInterval: 20 * time.Millisecond, RetryDelay: 20 * time.Millisecond}},
		e.pool, e.cl, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	g, err := runtime.New(runtime.Config{Brokers: []string{e.addr}, GroupID: e.k.Group(group), Topics: []string{e.k.Topic("out")}, DeadLetterTopic: e.k.Topic("dead"),
		CommitInterval: 20 * time.Millisecond, SessionTimeout: 2 * time.Second, RebalanceTimeout: 2 * time.Second,
		HeartbeatInterval: 200 * time.Millisecond}, s, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	stopRun := runMember(t, s, g)
	var once sync.Once
	return func() {
		once.Do(func() {
			if err := stopRun(); err != nil {
				t.Errorf("sender member of %s: %v", group, err)
			}
		})
	}
}

// committed sums the group's committed offsets over the outbound partitions.
func (e *env) committed(t *testing.T) int64 {
	t.Helper()
	cl := &kafka.Client{Addr: kafka.TCP(e.addr)}
	resp, err := cl.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: e.k.Group("sender"), Topics: map[string][]int{e.k.Topic("out"): {0, 1, 2, 3}}})
	if err != nil {
		return -1
	}
	var sum int64
	for _, p := range resp.Topics[e.k.Topic("out")] {
		if p.CommittedOffset > 0 {
			sum += p.CommittedOffset
		}
	}
	return sum
}

// retryInterval reads dest's stored backoff, 0 when no row is stored; any
// other query error fails the test rather than reading as 0.
func (e *env) retryInterval(dest string) int64 {
	e.t.Helper()
	var ms int64
	err := e.pool.QueryRow(context.Background(), "SELECT retry_interval_ms FROM sender_destinations WHERE destination = $1", dest).Scan(&ms)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		e.t.Fatalf("reading the backoff of %s: %v", dest, err)
	}
	return ms
}

func TestUnavailableDestinationIsRetriedWithinTheRequest(t *testing.T) {
	e := setup(t, "a.test")
	e.recv.SetFault("a.test", testreceiver.Fault{Status: 503, Times: 2}) // the client's 2 in-request retries absorb it
	e.member(t, time.Hour)
	want := e.publish(t, "a.test", "!r:me.test", 1)
	testenv.Eventually(t, 20*time.Second, "delivered", func() bool { return len(e.recv.PDUs("a.test")) == 1 })
	if got := string(e.recv.PDUs("a.test")[0]); got != want {
		t.Fatalf("delivered %s, want %s", got, want)
	}
	if n := e.recv.Requests("a.test"); n != 3 {
		t.Fatalf("%d requests, want 2 answered 503 and 1 accepted", n)
	}
	if ms := e.retryInterval("a.test"); ms != 0 {
		t.Fatalf("backed off for %d ms although the retry succeeded", ms)
	}
}

func TestForbiddenDestinationsRecordsAreCommittedWhileItBacksOff(t *testing.T) {
	e := setup(t, "a.test", "b.test")
	e.recv.SetFault("a.test", testreceiver.Fault{Status: 403})
	e.member(t, time.Hour)
	for i := 0; i < 5; i++ {
		e.publish(t, "a.test", fmt.Sprintf("!r%d:me.test", i%2), i)
	}
	e.publish(t, "b.test", "!r:me.test", 100)
	testenv.Eventually(t, 20*time.Second, "all 6 records committed", func() bool { return e.committed(t) == 6 })
	if ms := e.retryInterval("a.test"); ms <= 0 {
		t.Fatal("no backoff persisted for the forbidden destination")
	}
	var rows int
	if err := e.pool.QueryRow(context.Background(), "SELECT count(*) FROM sender_catchup WHERE destination = 'a.test'").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 2 {
		t.Fatalf("%d catch-up rows, want one per room (2)", rows)
	}
	if len(e.recv.PDUs("a.test")) != 0 || len(e.recv.PDUs("b.test")) != 1 {
		t.Fatalf("delivered %d to the forbidden destination and %d to the healthy one", len(e.recv.PDUs("a.test")), len(e.recv.PDUs("b.test")))
	}
}

func TestTwoMembersThroughARebalanceNeverOverlap(t *testing.T) {
	dests := []string{"a.test", "b.test", "c.test", "d.test", "e.test", "f.test"}
	e := setup(t, dests...)
	for _, d := range dests {
		e.recv.SetFault(d, testreceiver.Fault{Delay: 100 * time.Millisecond}) // keep transactions in flight across the rebalance
	}
	want := map[string]map[string]bool{}
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			d := dests[i%len(dests)]
			if want[d] == nil {
				want[d] = map[string]bool{}
			}
			want[d][e.publish(t, d, fmt.Sprintf("!r%d:me.test", i%3), i)] = true
		}
	}
	delivered := func() int {
		n := 0
		for _, d := range dests {
			got := map[string]bool{}
			for _, p := range e.recv.PDUs(d) {
				got[string(p)] = true
			}
			for p := range want[d] {
				if got[p] {
					n++
				}
			}
		}
		return n
	}
	publish(0, 120)
	stopA := e.member(t, time.Hour)
	testenv.Eventually(t, 30*time.Second, "first deliveries", func() bool { return delivered() >= 20 })
	e.member(t, time.Hour) // B joins: partitions move while A has transactions in flight
	publish(120, 240)
	testenv.Eventually(t, 30*time.Second, "deliveries after the join", func() bool { return delivered() >= 150 })
	stopA() // A leaves: its partitions drain and move to B
	publish(240, 300)
	testenv.Eventually(t, 60*time.Second, "all 300 delivered", func() bool { return delivered() == 300 })
	if n := e.recv.ConcurrentRejections(); n != 0 {
		t.Fatalf("%d transactions overlapped at one destination", n)
	}
	for _, d := range dests {
		for _, tx := range e.recv.Transactions(d) {
			if len(tx.PDUs) > 50 {
				t.Fatalf("transaction of %d PDUs to %s", len(tx.PDUs), d)
			}
		}
	}
}

func TestRestartedMemberCatchesUpWithoutNewRecords(t *testing.T) {
	e := setup(t, "a.test")
	e.recv.SetFault("a.test", testreceiver.Fault{Status: 403})
	stop := e.member(t, 300*time.Millisecond)
	e.publish(t, "a.test", "!r1:me.test", 1)
	testenv.Eventually(t, 20*time.Second, "backoff persisted", func() bool { return e.retryInterval("a.test") > 0 })
	last1 := e.publish(t, "a.test", "!r1:me.test", 2)
	last2 := e.publish(t, "a.test", "!r2:me.test", 3)
	testenv.Eventually(t, 20*time.Second, "all 3 records committed", func() bool { return e.committed(t) == 3 })
	stop()
	// The destination recovers while no member runs; nothing new is published:
	// the next member must find it through the store and its partition.
	e.recv.ClearFault("a.test")
	e.member(t, 300*time.Millisecond)
	testenv.Eventually(t, 20*time.Second, "caught up after the restart", func() bool { return len(e.recv.PDUs("a.test")) == 2 })
	got := map[string]bool{}
	for _, p := range e.recv.PDUs("a.test") {
		got[string(p)] = true
	}
	if !got[last1] || !got[last2] {
		t.Fatalf("catch-up sent %d PDUs, want the latest of each room", len(got))
	}
	testenv.Eventually(t, 20*time.Second, "backoff cleared", func() bool { return e.retryInterval("a.test") == 0 })
}

func TestRebalanceStopsCatchUpsWokenWithoutRecords(t *testing.T) {
	// One destination per partition, so whichever partitions move, some
	// destination moves while its catch-up is under way.
	byPartition := map[int]string{}
	parts := []int{0, 1, 2, 3}
	for i := 0; len(byPartition) < 4; i++ {
		d := fmt.Sprintf("d%d.test", i)
		p := (&kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: []byte(d)}, parts...)
		if _, ok := byPartition[p]; !ok {
			byPartition[p] = d
		}
	}
	var dests []string
	for _, d := range byPartition {
		dests = append(dests, d)
	}
	e := setup(t, dests...)
	for _, d := range dests {
		e.recv.SetFault(d, testreceiver.Fault{Status: 403})
	}
	stop := e.member(t, 200*time.Millisecond)
	latest := map[string]string{}
	for i := 0; i < 15; i++ {
		for _, d := range dests {
			latest[d+fmt.Sprint(i)] = e.publish(t, d, fmt.Sprintf("!r%d:me.test", i), len(latest)+1)
		}
	}
	testenv.Eventually(t, 30*time.Second, "all records committed", func() bool { return e.committed(t) == int64(len(latest)) })
	stop()
	for _, d := range dests {
		e.recv.SetFault(d, testreceiver.Fault{Delay: 40 * time.Millisecond}) // recovered, slowly
	}
	e.member(t, 200*time.Millisecond)
	testenv.Eventually(t, 30*time.Second, "catch-ups under way", func() bool { return e.recv.TotalPDUs() >= 8 })
	e.member(t, 200*time.Millisecond) // partitions move while their catch-ups run
	testenv.Eventually(t, 60*time.Second, "every room caught up", func() bool {
		for _, d := range dests {
			got := map[string]bool{}
			for _, p := range e.recv.PDUs(d) {
				got[string(p)] = true
			}
			for i := 0; i < 15; i++ {
				if !got[latest[d+fmt.Sprint(i)]] {
					return false
				}
			}
		}
		return true
	})
	if n := e.recv.ConcurrentRejections(); n != 0 {
		t.Fatalf("%d transactions overlapped at one destination", n)
	}
}

// A member waiting on a slow destination when its partition is revoked must
// let go of it before the group's rebalance timeout: otherwise the group
// expires it, the new owner sends, and the destination gets two transactions
// at once (issue 11: a 2 s rebalance timeout and a 5 s remote).
func TestRevokedPartitionsSlowSendsAreCutBeforeTheRebalanceTimeout(t *testing.T) {
	dests := []string{"a.test", "b.test", "c.test", "d.test", "e.test", "f.test"}
	e := setup(t, dests...)
	for _, d := range dests {
		e.recv.SetFault(d, testreceiver.Fault{Delay: 5 * time.Second})
	}
	want := 0
	for i := 0; i < 24; i++ {
		e.publish(t, dests[i%len(dests)], fmt.Sprintf("!r%d:me.test", i%3), i)
		want++
	}
	e.member(t, time.Hour)
	testenv.Eventually(t, 30*time.Second, "a transaction in flight to every destination", func() bool {
		for _, d := range dests {
			if e.recv.Requests(d) == 0 {
				return false
			}
		}
		return true
	})
	e.member(t, time.Hour) // B joins while A waits on every destination
	// A destination that answered an overlap with 429 backs off for an hour,
	// so an overlap ends the wait as well.
	testenv.Eventually(t, 90*time.Second, "all delivered", func() bool { return e.recv.TotalPDUs() >= want || e.recv.ConcurrentRejections() > 0 })
	if n := e.recv.ConcurrentRejections(); n != 0 {
		t.Fatalf("%d transactions overlapped at one destination", n)
	}
}

// Two members that both believe they own every destination (two groups on
// one topic: what a member the group expired while it still sends and the
// member that took over amount to) never send to one destination at once:
// the fence lets one at a time.
func TestTwoOwnersOfOneDestinationAreFenced(t *testing.T) {
	dests := []string{"a.test", "b.test", "c.test"}
	e := setup(t, dests...)
	for _, d := range dests {
		e.recv.SetFault(d, testreceiver.Fault{Delay: 150 * time.Millisecond})
	}
	e.memberOf(t, "one", time.Hour)
	e.memberOf(t, "two", time.Hour)
	for i := 0; i < 60; i++ {
		e.publish(t, dests[i%len(dests)], fmt.Sprintf("!r%d:me.test", i%3), i)
	}
	// Each member delivers every record once: 120 PDUs, 60 of them twice.
	testenv.Eventually(t, 60*time.Second, "both members delivered everything", func() bool { return e.recv.TotalPDUs() >= 120 })
	if n := e.recv.ConcurrentRejections(); n != 0 {
		t.Fatalf("%d transactions overlapped at one destination", n)
	}
}

// When the connection holding the fences breaks, the fences are gone (another
// member could take them), so a send under way is cancelled, and sent again
// once the fence is held anew: delivered, never left undone.
func TestALostFenceCancelsTheSendAndItIsSentAgain(t *testing.T) {
	e := setup(t, "a.test")
	e.recv.SetFault("a.test", testreceiver.Fault{Delay: 10 * time.Second, Times: 1})
	e.run(t, time.Hour)
	want := e.publish(t, "a.test", "!r:me.test", 1)
	testenv.Eventually(t, 20*time.Second, "the transaction in flight", func() bool { return e.recv.Requests("a.test") == 1 })
	var killed int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d fence connections (%v), want 1", killed, err)
	}
	testenv.Eventually(t, 8*time.Second, "sent again under a new fence", func() bool { return len(e.recv.PDUs("a.test")) == 1 })
	if got := string(e.recv.PDUs("a.test")[0]); got != want {
		t.Fatalf("delivered %s, want %s", got, want)
	}
	if n := e.counter(t, "fedpipe_sender_fence_lost_total", "", ""); n != 1 {
		t.Fatalf("fence lost %v times, want 1", n)
	}
	testenv.Eventually(t, 10*time.Second, "committed", func() bool { return e.committed(t) == 1 })
}
