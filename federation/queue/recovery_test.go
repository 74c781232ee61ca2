package queue_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/presence"
	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// presenceSent reports whether dest received a presence update for user.
func (f *fixture) presenceSent(t *testing.T, dest, user string) bool {
	t.Helper()
	for _, push := range f.pushes(t, dest) {
		for _, u := range push {
			if u["user_id"] == user {
				return true
			}
		}
	}
	return false
}

// A destination whose failed transaction held only EDUs has no catch-up
// rows, so nothing wakes it: once its backoff is over, the next EDU must be
// tried, and a failure must grow the backoff, as Synapse does.
func TestADestinationThatFailedWithOnlyEDUsIsTriedAgainWhenDue(t *testing.T) {
	f := setup(t)
	f.tr.mu.Lock()
	f.tr.failing["a.test"] = errDown
	f.tr.mu.Unlock()
	now := f.clk.Now().UnixMilli()
	st := func(user string) presence.State {
		return presence.State{UserID: user, Presence: edu.Online, LastActiveTS: now}
	}
	f.presence(t, "a.test", st("@a:me.test"))
	testenv.Eventually(t, 5*time.Second, "backed off", func() bool { return f.retry("a.test").Interval == 10*time.Minute && f.done.Load() == 1 })
	f.presence(t, "a.test", st("@b:me.test")) // backing off: dropped
	if f.done.Load() != 2 || len(f.tr.attemptsTo("a.test")) != 1 {
		t.Fatalf("%d done, %d transactions tried while backing off; want 2 done, the one that failed", f.done.Load(), len(f.tr.attemptsTo("a.test")))
	}

	f.clk.advance(12 * time.Minute) // due; still down
	f.presence(t, "a.test", st("@c:me.test"))
	testenv.Eventually(t, 5*time.Second, "tried again and backed off for longer", func() bool { return f.retry("a.test").Interval == 20*time.Minute })

	f.tr.mu.Lock()
	delete(f.tr.failing, "a.test")
	f.tr.mu.Unlock()
	f.clk.advance(30 * time.Minute) // due; up again
	f.presence(t, "a.test", st("@d:me.test"))
	testenv.Eventually(t, 5*time.Second, "delivered", func() bool { return f.presenceSent(t, "a.test", "@d:me.test") })
	testenv.Eventually(t, 5*time.Second, "backoff cleared", func() bool { return f.retry("a.test") == queue.RetryState{} })
	f.presence(t, "a.test", st("@e:me.test"))
	testenv.Eventually(t, 5*time.Second, "live", func() bool { return f.presenceSent(t, "a.test", "@e:me.test") })
	if d := f.done.Load(); d != 5 {
		t.Fatalf("%d items done, want 5", d)
	}
}

// An operator resumes a destination that was paused while it only had EDUs:
// there is no catch-up row to wake it, and the EDUs after the resume must
// be sent.
func TestAResumedDestinationSendsEDUsWithoutACatchUpRow(t *testing.T) {
	f := setup(t)
	f.store.setPaused("a.test", true)
	typing := func(n string) queue.EDU {
		return queue.EDU{EDU: txn.EDU{Type: edu.TypeTyping, Content: json.RawMessage(`{"n":` + n + `}`)}}
	}
	if err := f.m.EnqueueEDU(context.Background(), "a.test", typing("1"), func() { f.done.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if f.done.Load() != 1 || f.metric(t, "fedpipe_sender_edus_dropped_total", "edu_type", edu.TypeTyping) != 1 {
		t.Fatal("an EDU for a paused destination is dropped, counted and done")
	}
	f.store.setPaused("a.test", false)
	f.clk.advance(time.Second) // more than CatchUpInterval since the pause was read
	if err := f.m.EnqueueEDU(context.Background(), "a.test", typing("2"), func() { f.done.Add(1) }); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "sent after the resume", func() bool { return len(f.txns("a.test")) == 1 })
	if got := string(f.txns("a.test")[0].EDUs[0].Content); got != `{"n":2}` {
		t.Fatalf("sent %s, want the EDU queued after the resume", got)
	}
}
