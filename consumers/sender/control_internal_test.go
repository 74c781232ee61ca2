package sender

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// recordingController stands in for the queue manager: it records the calls.
type recordingController struct {
	mu    sync.Mutex
	calls []string
}

func (c *recordingController) ResetBackoff(dest string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, "reset "+dest)
}

func (c *recordingController) CatchUp(dest string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, "catch_up "+dest)
}

func (c *recordingController) SetPaused(dest string, paused bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	op := "resume "
	if paused {
		op = "pause "
	}
	c.calls = append(c.calls, op+dest)
}

func (c *recordingController) seen() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls)
}

func TestControlListenerHearsCommittedSignalsWithinASecondAndSurvivesALostConnection(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pool := testenv.Pool(t, testenv.Database(t))
	ctl := &recordingController{}
	l, err := NewControlListener(pool, ctl, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	l.retry = 10 * time.Millisecond
	listening := make(chan struct{}, 4)
	l.listening = func() { listening <- struct{}{} }
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	waitListening := func() {
		t.Helper()
		select {
		case <-listening:
		case <-time.After(10 * time.Second):
			t.Fatal("the listener never listened")
		}
	}
	waitListening()

	// A signal in a transaction that rolls back is never heard; the ones in a
	// committed transaction are, in order, within a second.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := Signal(ctx, tx, OpReset, "rolledback.test"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	tx, err = pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct{ op, dest string }{{OpPause, "a.test"}, {OpReset, "b.test"}, {OpResume, "a.test"}} {
		if err := Signal(ctx, tx, s.op, s.dest); err != nil {
			t.Fatal(err)
		}
	}
	// Invalid payloads are counted and ignored, not fatal.
	for _, p := range []string{"not json", `{"op":"explode","destination":"c.test"}`, `{"op":"reset"}`} {
		if _, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", ControlChannel, p); err != nil {
			t.Fatal(err)
		}
	}
	committed := time.Now()
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"pause a.test", "reset b.test", "resume a.test"}
	testenv.Eventually(t, time.Second, "the committed signals", func() bool { return len(ctl.seen()) >= len(want) })
	t.Logf("signals heard %s after the commit", time.Since(committed).Round(time.Millisecond))
	if got := ctl.seen(); !slices.Equal(got, want) {
		t.Fatalf("calls %q, want %q", got, want)
	}

	// The listening connection dies (a database restart, an idle timeout):
	// the listener listens again and hears what comes next.
	if _, err := pool.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"); err != nil {
		t.Fatal(err)
	}
	waitListening()
	if err := Signal(ctx, pool, OpPause, "after.test"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Second, "the signal after reconnecting", func() bool { return slices.Contains(ctl.seen(), "pause after.test") })
	if n := len(ctl.seen()); n != 4 {
		t.Fatalf("calls %q, want 4", ctl.seen())
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v at shutdown", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}
