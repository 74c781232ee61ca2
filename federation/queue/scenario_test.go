package queue_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// metric reads a gauge or a counter (summed over labels matching label=value
// when label is set) from the fixture's registry. A metric the registry does
// not hold fails the test, so a renamed metric does not read as 0; a labelled
// metric that is registered but has no such series (never incremented) reads
// 0.
func (f *fixture) metric(t *testing.T, name, label, value string) float64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	found := false
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		found = true
	metrics:
		for _, m := range mf.GetMetric() {
			if label != "" {
				for _, l := range m.GetLabel() {
					if l.GetName() == label && l.GetValue() != value {
						continue metrics
					}
				}
			}
			sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	if !found && !testenv.Registered(f.reg, name) {
		t.Fatalf("metric %s is not registered", name)
	}
	return sum
}

func (f *fixture) retry(dest string) queue.RetryState {
	r, _ := f.store.LoadRetry(context.Background(), dest)
	return r
}

func (f *fixture) txns(dest string) []*txn.Transaction {
	f.tr.mu.Lock()
	defer f.tr.mu.Unlock()
	return append([]*txn.Transaction(nil), f.tr.got[dest]...)
}

func TestTransientFailureRetriesTheSameTransaction(t *testing.T) {
	for _, tc := range []struct {
		name      string
		failures  int
		delivered bool
	}{
		{"recovers within the retries: sent once, same id, no backoff", 2, true},
		{"still failing after the retries: backs off", 3, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := setup(t) // RetryAttempts defaults to 2
			f.tr.mu.Lock()
			f.tr.flaky["a.test"] = tc.failures
			f.tr.mu.Unlock()
			for i := 0; i < 3; i++ {
				f.pdu(t, "a.test", "!r")
			}
			testenv.Eventually(t, 5*time.Second, "all items done", func() bool { return f.done.Load() == 3 })
			f.tr.mu.Lock()
			attempts := map[string]int{}
			for key, n := range f.tr.attempts {
				if dest, id, _ := strings.Cut(key, " "); dest == "a.test" {
					attempts[id] = n
				}
			}
			f.tr.mu.Unlock()
			got := f.txns("a.test")
			if !tc.delivered {
				if len(got) != 0 || f.retry("a.test").Interval != 10*time.Minute {
					t.Fatalf("delivered %d transactions, backoff %+v; want none and a backoff", len(got), f.retry("a.test"))
				}
				if len(attempts) != 1 {
					t.Fatalf("attempts by transaction id %v, want one id sent 3 times", attempts)
				}
				for _, n := range attempts {
					if n != 3 {
						t.Fatalf("attempts by transaction id %v, want one id sent 3 times", attempts)
					}
				}
				return
			}
			if f.retry("a.test").Interval != 0 {
				t.Fatalf("backed off although a retry succeeded: %+v", f.retry("a.test"))
			}
			var pdus int
			for _, tx := range got {
				pdus += len(tx.PDUs)
			}
			if pdus != 3 {
				t.Fatalf("%d PDUs delivered, want 3", pdus)
			}
			if n := attempts[got[0].ID]; n != tc.failures+1 {
				t.Fatalf("first transaction %s sent %d times (attempts %v), want %d with one id", got[0].ID, n, attempts, tc.failures+1)
			}
		})
	}
}

func TestUnsendablePDUIsDroppedAndTheRestSent(t *testing.T) {
	f := setup(t)
	f.tr.delay.Store(int64(50 * time.Millisecond))
	f.pdu(t, "a.test", "!r") // in flight while the next three queue up
	good1 := f.pdu(t, "a.test", "!r")
	bad := json.RawMessage(`{"room_id":"!r","n":0.5}`) // floats have no canonical form
	if err := f.m.EnqueuePDU(context.Background(), "a.test", queue.PDU{RoomID: "!r", EventID: "$bad", Position: f.pos.Add(1), JSON: bad}, func() { f.done.Add(1) }); err != nil {
		t.Fatal(err)
	}
	good2 := f.pdu(t, "a.test", "!r")
	testenv.Eventually(t, 5*time.Second, "all four done", func() bool { return f.done.Load() == 4 })
	sent := f.tr.pdus("a.test")
	if len(sent) != 3 || sent[1] != good1 || sent[2] != good2 {
		t.Fatalf("sent %v, want the three good PDUs in order", sent)
	}
	if n := f.metric(t, "fedpipe_sender_dropped_total", "reason", "unsendable"); n != 1 {
		t.Fatalf("%v unsendable drops counted, want 1", n)
	}
	if f.retry("a.test").Interval != 0 {
		t.Fatal("a malformed PDU of ours backed the destination off")
	}
}

func TestEDUBatchesHoldAtMost100(t *testing.T) {
	f := setup(t)
	f.tr.delay.Store(int64(30 * time.Millisecond))
	f.pdu(t, "a.test", "!r")
	for i := 0; i < 250; i++ {
		if err := f.m.EnqueueEDU(context.Background(), "a.test", queue.EDU{EDU: txn.EDU{Type: "m.typing", Content: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))}}, func() { f.done.Add(1) }); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 5*time.Second, "all done", func() bool { return f.done.Load() == 251 })
	var edus, next int
	for _, tx := range f.txns("a.test") {
		if len(tx.EDUs) > txn.MaxEDUs {
			t.Fatalf("transaction with %d EDUs", len(tx.EDUs))
		}
		for _, e := range tx.EDUs {
			if string(e.Content) != fmt.Sprintf(`{"n":%d}`, next) {
				t.Fatalf("EDU %s out of order, want n=%d", e.Content, next)
			}
			next++
		}
		edus += len(tx.EDUs)
	}
	if edus != 250 {
		t.Fatalf("%d EDUs sent, want 250", edus)
	}
}

func TestBackoffGrowsToTheMaximumAndPersists(t *testing.T) {
	f := setupWith(t, func(c *queue.Config) { c.BackoffMax = 25 * time.Minute })
	f.tr.mu.Lock()
	f.tr.failing["a.test"] = errDown
	f.tr.mu.Unlock()
	f.pdu(t, "a.test", "!r")
	for _, want := range []time.Duration{10 * time.Minute, 20 * time.Minute, 25 * time.Minute, 25 * time.Minute} {
		testenv.Eventually(t, 5*time.Second, fmt.Sprintf("backoff of %s", want), func() bool {
			r := f.retry("a.test")
			return r.Interval == want && r.NextAttempt.Equal(f.clk.Now().Add(time.Duration(float64(want)*1.1)))
		})
		f.clk.advance(time.Duration(float64(want)*1.1) + time.Second) // due: the catch-up attempt fails again
	}
	if len(f.tr.pdus("a.test")) != 0 {
		t.Fatal("a failing destination received PDUs")
	}
}

func TestStopDuringCatchUpWaitsAndEnds(t *testing.T) {
	f := setup(t)
	f.tr.mu.Lock()
	f.tr.failing["a.test"] = errDown
	f.tr.mu.Unlock()
	for i := 0; i < 30; i++ {
		f.pdu(t, "a.test", fmt.Sprintf("!r%d", i))
	}
	testenv.Eventually(t, 5*time.Second, "all recorded for catch-up", func() bool { return f.done.Load() == 30 })
	f.tr.mu.Lock()
	delete(f.tr.failing, "a.test")
	f.tr.mu.Unlock()
	f.tr.delay.Store(int64(20 * time.Millisecond))
	f.clk.advance(time.Hour)
	testenv.Eventually(t, 5*time.Second, "catch-up under way", func() bool { return len(f.txns("a.test")) >= 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.m.Stop(ctx, []string{"a.test"}); err != nil {
		t.Fatalf("Stop during catch-up: %v", err)
	}
	sent := len(f.txns("a.test"))
	if n := f.metric(t, "fedpipe_sender_active_destinations", "", ""); n != 0 {
		t.Fatalf("%v destination workers still running after Stop", n)
	}
	if sent >= 30 {
		t.Fatalf("catch-up finished (%d rooms) before Stop could interrupt it; the test proves nothing", sent)
	}
}

func TestCatchUpAfterTakeoverWakesOwnedDestinationsWithTheirStoredBackoff(t *testing.T) {
	f := setupWith(t, func(c *queue.Config) { c.Owns = func(d string) bool { return d == "mine.test" } })
	now := f.clk.Now()
	// Left by a previous owner: both backed off for 20 minutes, now due.
	for _, d := range []string{"mine.test", "theirs.test"} {
		if err := f.store.SaveRetry(context.Background(), d, queue.RetryState{Interval: 20 * time.Minute, NextAttempt: now.Add(-time.Second)}); err != nil {
			t.Fatal(err)
		}
		f.store.mu.Lock()
		f.store.pdus["$"+d] = json.RawMessage(fmt.Sprintf(`{"for":%q}`, d))
		f.store.mu.Unlock()
		if err := f.store.RecordCatchUp(context.Background(), d, []queue.CatchUp{{RoomID: "!r", Position: 7, EventID: "$" + d}}); err != nil {
			t.Fatal(err)
		}
	}
	f.tr.mu.Lock()
	f.tr.failing["mine.test"] = errDown
	f.tr.mu.Unlock()
	testenv.Eventually(t, 5*time.Second, "the stored backoff doubled", func() bool { return f.retry("mine.test").Interval == 40*time.Minute })
	f.tr.mu.Lock()
	delete(f.tr.failing, "mine.test")
	f.tr.mu.Unlock()
	f.clk.advance(time.Hour)
	testenv.Eventually(t, 5*time.Second, "caught up", func() bool { return len(f.tr.pdus("mine.test")) == 1 })
	testenv.Eventually(t, 5*time.Second, "backoff cleared", func() bool { return f.retry("mine.test").Interval == 0 })
	if n := len(f.txns("theirs.test")); n != 0 || f.retry("theirs.test").Interval != 20*time.Minute {
		t.Fatalf("another member's destination was woken: %d transactions, backoff %+v", n, f.retry("theirs.test"))
	}
}

func TestIdleDestinationsReleaseTheirWorkers(t *testing.T) {
	f := setup(t)
	for d := 0; d < 20; d++ {
		for i := 0; i < 5; i++ {
			f.pdu(t, fmt.Sprintf("d%d.test", d), "!r")
		}
	}
	testenv.Eventually(t, 5*time.Second, "all delivered", func() bool { return f.done.Load() == 100 })
	testenv.Eventually(t, 5*time.Second, "no worker left", func() bool {
		return f.metric(t, "fedpipe_sender_active_destinations", "", "") == 0
	})
	f.pdu(t, "d3.test", "!r") // an idle destination starts again on demand
	testenv.Eventually(t, 5*time.Second, "delivered after idling", func() bool { return len(f.tr.pdus("d3.test")) == 6 })
}

func TestCatchUpPagesPastDestinationsOfOtherMembers(t *testing.T) {
	f := setupWith(t, func(c *queue.Config) {
		c.WakeupsPerTick = 2
		c.CatchUpBatch = 3
		c.Owns = func(d string) bool { return d == "z.test" }
	})
	// Due, in name order before ours: with a fixed first page ours never came up.
	for _, d := range []string{"a.test", "b.test", "c.test", "d.test", "z.test"} {
		for r := 0; r < 7; r++ {
			id := fmt.Sprintf("$%s%d", d, r)
			f.store.mu.Lock()
			f.store.pdus[id] = json.RawMessage(fmt.Sprintf(`{"n":%d}`, r))
			f.store.mu.Unlock()
			if err := f.store.RecordCatchUp(context.Background(), d, []queue.CatchUp{{RoomID: fmt.Sprintf("!r%d", r), Position: int64(10 + r), EventID: id}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	testenv.Eventually(t, 5*time.Second, "our destination caught up, all 7 rooms in batches of 3", func() bool { return len(f.tr.pdus("z.test")) == 7 })
	for i, p := range f.tr.pdus("z.test") {
		if p != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("catch-up PDU %d is %s: not in position order", i, p)
		}
	}
	for _, d := range []string{"a.test", "b.test", "c.test", "d.test"} {
		if n := len(f.txns(d)); n != 0 {
			t.Fatalf("%d transactions to %s, another member's destination", n, d)
		}
	}
}

func TestPausedDestinationIsRecordedNotSentUntilResumed(t *testing.T) {
	f := setup(t)
	f.store.setPaused("a.test", true)
	f.pdu(t, "a.test", "!r1")
	last1 := f.pdu(t, "a.test", "!r1")
	last2 := f.pdu(t, "a.test", "!r2")
	if err := f.m.EnqueueEDU(context.Background(), "a.test", queue.EDU{EDU: txn.EDU{Type: "m.typing", Content: json.RawMessage(`{}`)}}, func() { f.done.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if f.done.Load() != 4 || len(f.txns("a.test")) != 0 {
		t.Fatalf("paused: %d done, %d transactions; want all 4 done (recorded or dropped) and nothing sent", f.done.Load(), len(f.txns("a.test")))
	}
	rooms, _ := f.store.CatchUpRooms(context.Background(), "a.test", 10)
	if len(rooms) != 2 {
		t.Fatalf("%d rooms recorded for catch-up, want 2", len(rooms))
	}
	f.store.setPaused("a.test", false) // resumed by the operator
	testenv.Eventually(t, 5*time.Second, "caught up after resuming", func() bool { return len(f.tr.pdus("a.test")) == 2 })
	if got := f.tr.pdus("a.test"); got[0] != last1 || got[1] != last2 {
		t.Fatalf("caught up with %v, want the latest of each room", got)
	}
}

func TestOperatorResetEndsABackoffEarly(t *testing.T) {
	f := setup(t)
	f.tr.mu.Lock()
	f.tr.failing["a.test"] = errDown
	f.tr.mu.Unlock()
	missed := f.pdu(t, "a.test", "!r")
	testenv.Eventually(t, 5*time.Second, "backed off", func() bool { return f.retry("a.test").Interval == 10*time.Minute })
	if n := f.metric(t, "fedpipe_sender_destinations_backing_off", "", ""); n != 1 {
		t.Fatalf("%v destinations counted as backing off, want 1", n)
	}
	f.tr.mu.Lock()
	delete(f.tr.failing, "a.test")
	f.tr.mu.Unlock()
	if err := f.store.SaveRetry(context.Background(), "a.test", queue.RetryState{}); err != nil { // the admin API's reset
		t.Fatal(err)
	}
	// The clock does not move: only the reset can make the destination due.
	testenv.Eventually(t, 5*time.Second, "caught up", func() bool { return len(f.tr.pdus("a.test")) == 1 })
	if got := f.tr.pdus("a.test")[0]; got != missed {
		t.Fatalf("caught up with %s, want %s", got, missed)
	}
	testenv.Eventually(t, 5*time.Second, "last success recorded", func() bool { return f.store.lastSuccess("a.test") == f.pos.Load() })
	f.pdu(t, "a.test", "!r")
	testenv.Eventually(t, 5*time.Second, "live, and its position recorded", func() bool {
		return len(f.tr.pdus("a.test")) == 2 && f.store.lastSuccess("a.test") == f.pos.Load()
	})
	if n := f.metric(t, "fedpipe_sender_destinations_backing_off", "", ""); n != 0 {
		t.Fatalf("%v destinations counted as backing off after recovery, want 0", n)
	}
}

func TestMembersStartedTogetherNeverShareTransactionIDs(t *testing.T) {
	a, b := setup(t), setup(t) // same clock reading: same start millisecond
	a.pdu(t, "x.test", "!r")
	b.pdu(t, "x.test", "!r")
	testenv.Eventually(t, 5*time.Second, "both sent", func() bool { return len(a.txns("x.test")) == 1 && len(b.txns("x.test")) == 1 })
	if ida, idb := a.txns("x.test")[0].ID, b.txns("x.test")[0].ID; ida == idb {
		t.Fatalf("two members used transaction id %s for one destination", ida)
	}
}

func TestPerPDUErrorsAreCountedAndThePDUsDone(t *testing.T) {
	f := setup(t)
	f.tr.mu.Lock()
	f.tr.rejected = map[string]string{"$e1": "signature mismatch", "$e2": "not allowed"}
	f.tr.mu.Unlock()
	for i := 0; i < 3; i++ {
		f.pdu(t, "a.test", "!r")
	}
	testenv.Eventually(t, 5*time.Second, "all done", func() bool { return f.done.Load() == 3 })
	if n := f.metric(t, "fedpipe_sender_pdus_rejected_total", "", ""); n < 2 {
		t.Fatalf("%v per-PDU errors counted, want at least the 2 rejected", n)
	}
	if f.retry("a.test").Interval != 0 {
		t.Fatal("per-PDU errors backed the destination off")
	}
}

// The pacer spreads a tick's wake-ups over the interval, one every
// CatchUpInterval/WakeupsPerTick: destinations due together (a storm after
// an outage) do not start their catch-up workers, and the store round trips
// and fence takes that come with them, in one burst in front of the healthy
// destinations' (issue 18).
func TestCatchUpWakeupsAreSpreadOverTheInterval(t *testing.T) {
	f := setupWith(t, func(c *queue.Config) {
		c.CatchUpInterval = 400 * time.Millisecond
		c.WakeupsPerTick = 4
		c.Owns = func(string) bool { return true }
	})
	dests := []string{"a.test", "b.test", "c.test", "d.test"}
	for i, d := range dests {
		id := fmt.Sprintf("$%s", d)
		f.store.mu.Lock()
		f.store.pdus[id] = json.RawMessage(`{}`)
		f.store.mu.Unlock()
		if err := f.store.RecordCatchUp(context.Background(), d, []queue.CatchUp{{RoomID: "!r", Position: int64(10 + i), EventID: id}}); err != nil {
			t.Fatal(err)
		}
	}
	first := map[string]time.Time{}
	testenv.Eventually(t, 10*time.Second, "every destination caught up", func() bool {
		for _, d := range dests {
			if _, ok := first[d]; !ok && len(f.tr.pdus(d)) > 0 {
				first[d] = time.Now()
			}
		}
		return len(first) == len(dests)
	})
	var earliest, latest time.Time
	for _, at := range first {
		if earliest.IsZero() || at.Before(earliest) {
			earliest = at
		}
		if at.After(latest) {
			latest = at
		}
	}
	// Three gaps of 100 ms between four wake-ups; together they would be
	// sent within a few milliseconds.
	if spread := latest.Sub(earliest); spread < 250*time.Millisecond {
		t.Fatalf("the four due destinations caught up within %s of each other, want one every 100 ms", spread)
	}
}
