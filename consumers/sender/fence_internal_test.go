package sender

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// A released fence stays taken for fenceLinger, so the destination's next
// worker takes it back without a round trip, and another member cannot take
// it meanwhile; Run then gives it back, and the other member can.
func TestReleasedFenceLingersThenIsGivenBack(t *testing.T) {
	pool := testenv.Pool(t, testenv.Database(t))
	f := NewFence(pool.Config().ConnConfig, slog.New(slog.DiscardHandler))
	testenv.Background(t, "fence", f.Run)
	ctx := context.Background()
	other, err := pool.Acquire(ctx) // another member's connection
	if err != nil {
		t.Fatal(err)
	}
	defer other.Release()
	otherTakes := func() bool {
		var ok bool
		if err := other.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", fenceKey("a.test")).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		if ok {
			if _, err := other.Exec(ctx, "SELECT pg_advisory_unlock($1)", fenceKey("a.test")); err != nil {
				t.Fatal(err)
			}
		}
		return ok
	}
	held, err := f.Acquire(ctx, "a.test")
	if err != nil || held == nil {
		t.Fatalf("Acquire: %v, %v", held, err)
	}
	f.Release("a.test")
	if otherTakes() {
		t.Fatal("another member took a fence released a moment ago")
	}
	again, err := f.Acquire(ctx, "a.test")
	if err != nil || again == nil {
		t.Fatalf("taking the lingering fence again: %v, %v", again, err)
	}
	f.Release("a.test")
	testenv.Eventually(t, 10*time.Second, "the fence given back", otherTakes)
}
