package queue_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/presence"
	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// hold makes sends wait (a slow destination) until the returned release is
// called; release is idempotent and runs at cleanup at the latest.
func (f *fixture) hold(t *testing.T) (release func()) {
	t.Helper()
	ch := make(chan struct{})
	f.tr.mu.Lock()
	f.tr.held = ch
	f.tr.mu.Unlock()
	released := false
	release = func() {
		if released {
			return
		}
		released = true
		f.tr.mu.Lock()
		f.tr.held = nil
		f.tr.mu.Unlock()
		close(ch)
	}
	t.Cleanup(release)
	return release
}

// waitInFlight waits until a transaction to dest is being sent.
func (f *fixture) waitInFlight(t *testing.T, dest string) {
	t.Helper()
	testenv.Eventually(t, 5*time.Second, "a transaction in flight to "+dest, func() bool {
		f.tr.mu.Lock()
		defer f.tr.mu.Unlock()
		return f.tr.inFlight[dest] == 1
	})
}

func (f *fixture) presence(t *testing.T, dest string, states ...presence.State) {
	t.Helper()
	if err := f.m.EnqueuePresence(context.Background(), dest, states, func() { f.done.Add(1) }); err != nil {
		t.Fatal(err)
	}
}

// pushes returns the updates of dest's m.presence EDUs, per transaction that
// had one, and fails when a transaction holds more than one.
func (f *fixture) pushes(t *testing.T, dest string) [][]map[string]any {
	t.Helper()
	var out [][]map[string]any
	for _, tx := range f.txns(dest) {
		var push []map[string]any
		n := 0
		for _, e := range tx.EDUs {
			if e.Type != edu.TypePresence {
				continue
			}
			n++
			var c struct {
				Push []map[string]any `json:"push"`
			}
			if err := json.Unmarshal(e.Content, &c); err != nil {
				t.Fatal(err)
			}
			push = c.Push
		}
		if n > 1 {
			t.Fatalf("transaction %s holds %d m.presence EDUs, want one", tx.ID, n)
		}
		if n == 1 {
			out = append(out, push)
		}
	}
	return out
}

func TestPresenceIsAgedWhenTheTransactionIsBuilt(t *testing.T) {
	f := setup(t)
	release := f.hold(t)
	t0 := f.clk.Now().UnixMilli()
	f.presence(t, "a.test", presence.State{UserID: "@a:me.test", Presence: edu.Online, LastActiveTS: t0 - 5000, CurrentlyActive: true})
	f.waitInFlight(t, "a.test")
	// Learned while the first transaction is stuck: 1 s old when enqueued.
	f.presence(t, "a.test", presence.State{UserID: "@b:me.test", Presence: edu.Unavailable, StatusMsg: new("lunch"), LastActiveTS: t0 - 1000, CurrentlyActive: true})
	f.clk.advance(10 * time.Minute)
	release()
	testenv.Eventually(t, 5*time.Second, "both delivered", func() bool { return f.done.Load() == 2 })

	txns := f.txns("a.test")
	pushes := f.pushes(t, "a.test")
	if len(txns) != 2 || len(pushes) != 2 {
		t.Fatalf("%d transactions, %d with presence; want 2, 2", len(txns), len(pushes))
	}
	a, b := pushes[0][0], pushes[1][0]
	if want := map[string]any{"user_id": "@a:me.test", "presence": "online", "last_active_ago": 5000.0, "currently_active": true}; fmt.Sprint(a) != fmt.Sprint(want) {
		t.Errorf("first update %v, want %v", a, want)
	}
	// Built 10 minutes after it was enqueued: the age counts them, and it is
	// exactly the transaction's origin_server_ts minus last_active_ts.
	wantAgo := float64(txns[1].OriginServerTS - (t0 - 1000))
	if want := map[string]any{"user_id": "@b:me.test", "presence": "unavailable", "last_active_ago": wantAgo, "status_msg": "lunch"}; fmt.Sprint(b) != fmt.Sprint(want) {
		t.Errorf("second update %v, want %v (no currently_active unless online)", b, want)
	}
	if wantAgo != 601000 {
		t.Errorf("last_active_ago %v, want 601000 (1 s old when enqueued, sent 10 min later)", wantAgo)
	}
}

func TestPresenceIsOneEDUOfAtMost50UsersPerTransactionLatestStateWinning(t *testing.T) {
	f := setup(t)
	release := f.hold(t)
	now := f.clk.Now().UnixMilli()
	state := func(i int, p string) presence.State {
		return presence.State{UserID: fmt.Sprintf("@u%d:me.test", i), Presence: p, LastActiveTS: now}
	}
	f.presence(t, "a.test", state(-1, edu.Online))
	f.waitInFlight(t, "a.test")
	for i := 0; i < 120; i += 2 { // two users per item
		f.presence(t, "a.test", state(i, edu.Online), state(i+1, edu.Online))
	}
	f.presence(t, "a.test", state(5, edu.Offline)) // replaces @u5's state, keeps its place
	typing, _ := edu.Typing{RoomID: "!r:me.test", UserID: "@u0:me.test", Typing: true}.EDU()
	if err := f.m.EnqueueEDU(context.Background(), "a.test", queue.EDU{EDU: typing, Key: "!r:me.test @u0:me.test"}, func() { f.done.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if got := f.metric(t, "fedpipe_sender_presence_superseded_total", "", ""); got != 1 {
		t.Fatalf("%v states superseded, want 1", got)
	}
	release()
	testenv.Eventually(t, 5*time.Second, "all done", func() bool { return f.done.Load() == 1+60+1+1 })
	pushes := f.pushes(t, "a.test")
	var sizes []int
	for _, p := range pushes {
		sizes = append(sizes, len(p))
	}
	if fmt.Sprint(sizes) != "[1 50 50 20]" {
		t.Fatalf("presence EDUs of %v users, want [1 50 50 20]", sizes)
	}
	for i, u := range pushes[1] {
		if want := fmt.Sprintf("@u%d:me.test", i); u["user_id"] != want {
			t.Fatalf("update %d is for %v, want %s (first queued, first sent)", i, u["user_id"], want)
		}
	}
	if p := pushes[1][5]["presence"]; p != "offline" {
		t.Fatalf("@u5 sent as %v, want its latest state (offline)", p)
	}
	if n := len(f.txns("a.test")[1].EDUs); n != 2 {
		t.Fatalf("%d EDUs beside the first batch of presence, want presence and typing", n)
	}
}

func TestPresenceForABackingOffDestinationIsDroppedCountedAndDone(t *testing.T) {
	f := setup(t)
	f.tr.mu.Lock()
	f.tr.failing["a.test"] = errDown
	f.tr.mu.Unlock()
	release := f.hold(t)
	now := f.clk.Now().UnixMilli()
	st := func(user, p string) presence.State {
		return presence.State{UserID: user, Presence: p, LastActiveTS: now}
	}
	f.presence(t, "a.test", st("@a:me.test", edu.Online)) // in flight, fails
	f.waitInFlight(t, "a.test")
	f.presence(t, "a.test", st("@b:me.test", edu.Online))                                // pending
	f.presence(t, "a.test", st("@b:me.test", edu.Offline), st("@c:me.test", edu.Online)) // supersedes @b: the item before is done at once
	if d := f.done.Load(); d != 1 {
		t.Fatalf("%d items done before anything was sent, want 1 (the superseded one)", d)
	}
	release()
	testenv.Eventually(t, 5*time.Second, "backing off, everything done", func() bool {
		return f.retry("a.test").Interval > 0 && f.done.Load() == 3
	})
	// Backing off: dropped as it arrives (and done so the offset moves on).
	f.presence(t, "a.test", st("@d:me.test", edu.Online), st("@e:me.test", edu.Online))
	f.presence(t, "a.test", st("@f:me.test", edu.Online))
	if d := f.done.Load(); d != 5 {
		t.Fatalf("%d items done, want 5", d)
	}
	// @a in flight, @b and @c pending, then @d, @e and @f: one per user state.
	if got := f.metric(t, "fedpipe_sender_edus_dropped_total", "edu_type", edu.TypePresence); got != 6 {
		t.Fatalf("%v presence states counted as dropped, want 6", got)
	}
	if got := f.metric(t, "fedpipe_sender_edus_dropped_total", "edu_type", edu.TypeTyping); got != 0 {
		t.Fatalf("%v typing EDUs counted as dropped, want 0", got)
	}
	if n := len(f.txns("a.test")); n != 0 {
		t.Fatalf("%d transactions accepted by a failing destination", n)
	}
}

// TestTenThousandPresenceUpdatesOfOneUserReachASlowDestinationAsFewEntries:
// a user flapping 10,000 times while the destination is slow costs the
// destination a couple of updates, the last state winning, and the records
// are done at once instead of waiting for it.
func TestTenThousandPresenceUpdatesOfOneUserReachASlowDestinationAsFewEntries(t *testing.T) {
	f := setup(t)
	release := f.hold(t)
	t0 := f.clk.Now().UnixMilli()
	const n = 10000
	user := "@flappy:me.test"
	state := func(i int) presence.State {
		p := []string{edu.Online, edu.Unavailable, edu.Offline}[i%3]
		return presence.State{UserID: user, Presence: p, StatusMsg: new(fmt.Sprintf("update %d", i)), LastActiveTS: t0 - int64(n-i), CurrentlyActive: i%2 == 0}
	}
	f.presence(t, "slow.test", state(0))
	f.waitInFlight(t, "slow.test")
	start := time.Now()
	for i := 1; i <= n; i++ {
		f.presence(t, "slow.test", state(i))
	}
	took := time.Since(start)
	// Every superseded update is done while the first transaction is still
	// in flight: the partition's offset moves on without waiting for it.
	if d := f.done.Load(); d != n-1 {
		t.Fatalf("%d updates done while the destination is stuck, want %d", d, n-1)
	}
	release()
	testenv.Eventually(t, 5*time.Second, "all done", func() bool { return f.done.Load() == n+1 })
	var entries []map[string]any
	for _, p := range f.pushes(t, "slow.test") {
		for _, u := range p {
			if u["user_id"] == user {
				entries = append(entries, u)
			}
		}
	}
	if len(entries) > 2 {
		t.Fatalf("%d m.presence entries for %s, want at most 2 (the one in flight, then the latest)", len(entries), user)
	}
	last := entries[len(entries)-1]
	want := edu.PresenceUpdateAt(state(n), time.UnixMilli(f.txns("slow.test")[len(f.txns("slow.test"))-1].OriginServerTS))
	wantJSON, _ := json.Marshal(want)
	var wantMap map[string]any
	_ = json.Unmarshal(wantJSON, &wantMap)
	if fmt.Sprint(last) != fmt.Sprint(wantMap) {
		t.Fatalf("last entry %v, want the last state enqueued %v", last, wantMap)
	}
	if got := f.metric(t, "fedpipe_sender_presence_superseded_total", "", ""); got != n-1 {
		t.Fatalf("%v superseded, want %d", got, n-1)
	}
	t.Logf("%d updates enqueued in %v; %d entries sent in %d transactions", n, took, len(entries), len(f.txns("slow.test")))
}
