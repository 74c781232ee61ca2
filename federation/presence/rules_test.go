package presence

import (
	"fmt"
	"testing"
	"time"
)

const t0 = int64(1_800_000_000_000)

func sec(n int64) int64 { return n * 1000 }

func TestRulesFollowSynapse(t *testing.T) {
	tm := DefaultTimers
	run := func(prev State, in Input, syncing bool, now int64) (State, Reason) {
		return tm.Step(prev, Apply(prev, in, now), syncing, now)
	}
	s, why := run(Initial("@a:hs"), Input{Kind: InputSync, Syncing: true}, true, t0)
	if s.Presence != Online || !s.CurrentlyActive || why != ReasonChange || s.LastFederationUpdateTS != t0 {
		t.Fatalf("sync start: %+v %q", s, why)
	}
	// Activity within the granularity is not news.
	s2, why := run(s, Input{Kind: InputActive}, true, t0+sec(30))
	if why != ReasonNone || s2.LastActiveTS != t0+sec(30) {
		t.Fatalf("activity after 30 s: %+v %q", s2, why)
	}
	// currently_active ends one granularity after the last activity: news.
	s3, why := tm.Step(s2, s2, true, t0+sec(91))
	if s3.CurrentlyActive || why != ReasonChange {
		t.Fatalf("after 61 s idle: %+v %q", s3, why)
	}
	if next := tm.NextCheck(s2, true); next != t0+sec(90) {
		t.Fatalf("next check of an active user: %d, want %d", next-t0, sec(90))
	}
	// Idle for 5 minutes: unavailable.
	s4, why := tm.Step(s3, s3, true, t0+sec(30)+sec(301))
	if s4.Presence != Unavailable || why != ReasonChange {
		t.Fatalf("idle 5 min: %+v %q", s4, why)
	}
	// Activity brings an idle user back.
	s5, why := run(s4, Input{Kind: InputActive}, true, t0+sec(400))
	if s5.Presence != Online || !s5.CurrentlyActive || why != ReasonChange {
		t.Fatalf("active again: %+v %q", s5, why)
	}
	// Stopping syncing: still online for 30 s, then offline.
	s6, why := run(s5, Input{Kind: InputSync, Syncing: false}, false, t0+sec(410))
	if s6.Presence != Online || why != ReasonNone {
		t.Fatalf("sync stop: %+v %q", s6, why)
	}
	if next := tm.NextCheck(s6, false); next != t0+sec(440)+1 {
		t.Fatalf("next check after sync stop: %d", next-t0)
	}
	s7, why := tm.Step(s6, s6, false, t0+sec(440)+1)
	if s7.Presence != Offline || why != ReasonChange || tm.NextCheck(s7, false) != 0 {
		t.Fatalf("30 s after sync stop: %+v %q", s7, why)
	}
	// A status message is news, whatever the state.
	msg := "lunch"
	s8, why := run(s7, Input{Kind: InputSet, Presence: Offline, StatusMsg: &msg}, false, t0+sec(500))
	if why != ReasonChange || *s8.StatusMsg != "lunch" {
		t.Fatalf("status: %+v %q", s8, why)
	}
	if _, why := run(s8, Input{Kind: InputSet, Presence: Offline, StatusMsg: &msg}, false, t0+sec(510)); why != ReasonNone {
		t.Fatalf("same status again is news: %q", why)
	}
	// Clear: offline at once.
	s9, why := run(s5, Input{Kind: InputCleared}, false, t0+sec(420))
	if s9.Presence != Offline || why != ReasonChange {
		t.Fatalf("cleared: %+v %q", s9, why)
	}
}

func TestPingSlots(t *testing.T) {
	tm := DefaultTimers
	period := tm.Ping.Milliseconds()
	buckets := make([]int, 25)
	const users = 5000
	for i := range users {
		u := fmt.Sprintf("@user%d:hs.test", i)
		next := tm.nextPing(u, t0)
		if next < t0+tm.Granularity.Milliseconds() || next > t0+tm.Granularity.Milliseconds()+period {
			t.Fatalf("%s: ping %d ms after its last update", u, next-t0)
		}
		// Steady state: the next ping after a ping is one period later.
		if again := tm.nextPing(u, next); again != next+period {
			t.Fatalf("%s: ping after a ping %d ms later, want %d", u, again-next, period)
		}
		buckets[((next-t0-tm.Granularity.Milliseconds())*25/(period+1))]++
	}
	for i, n := range buckets {
		if n < users/25/2 || n > users/25*2 {
			t.Errorf("minute %d of the interval holds %d of %d pings: not spread evenly (%v)", i, n, users, buckets)
		}
	}
	if bad := (Timers{SyncTimeout: time.Second, Idle: time.Second, Granularity: time.Minute, Ping: 29 * time.Minute}); bad.Validate() == nil {
		t.Error("a ping interval that lets remotes time users out was accepted")
	}
}
