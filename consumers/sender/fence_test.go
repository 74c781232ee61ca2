package sender_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/consumers/sender"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// Many workers of one member taking their fences at once (answered in shared
// rounds) each get theirs, another member then gets none of them, and each
// is the other member's once given back (the unlock goes out after Release
// returns).
func TestFencesTakenTogetherAreExclusiveAndGivenBack(t *testing.T) {
	pool := testenv.Pool(t, testenv.Database(t))
	a := sender.NewFence(pool.Config().ConnConfig, slog.New(slog.DiscardHandler))
	b := sender.NewFence(pool.Config().ConnConfig, slog.New(slog.DiscardHandler))
	testenv.Background(t, "fence a", a.Run)
	testenv.Background(t, "fence b", b.Run)
	ctx := context.Background()
	dests := make([]string, 50)
	for i := range dests {
		dests[i] = fmt.Sprintf("d%d.test", i)
	}
	var g errgroup.Group
	for _, d := range dests {
		g.Go(func() error {
			held, err := a.Acquire(ctx, d)
			if err == nil && held == nil {
				err = fmt.Errorf("%s not taken", d)
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	for _, d := range dests {
		if held, err := b.Acquire(ctx, d); err != nil || held != nil {
			t.Fatalf("member b took %s (%v) while a holds it", d, err)
		}
	}
	for _, d := range dests {
		a.Release(d)
	}
	for _, d := range dests {
		testenv.Eventually(t, 5*time.Second, "b takes "+d, func() bool {
			held, err := b.Acquire(ctx, d)
			return err == nil && held != nil
		})
	}
	// Given back and taken again before its unlock went out, or after: a
	// holds it again either way, once b has let go.
	for _, d := range dests[:5] {
		b.Release(d)
		testenv.Eventually(t, 5*time.Second, "a takes "+d+" again", func() bool {
			held, err := a.Acquire(ctx, d)
			return err == nil && held != nil
		})
		a.Release(d)
		if held, err := a.Acquire(ctx, d); err != nil || held == nil {
			t.Fatalf("a could not take back %s it had just given back (%v)", d, err)
		}
		if held, err := b.Acquire(ctx, d); err != nil || held != nil {
			t.Fatalf("member b took %s (%v) while a holds it again", d, err)
		}
	}
}

// When the fences' connection is lost, every fence it held ends at once, and
// the member takes them again on a new connection; once its Run has ended,
// Acquire fails instead of waiting for an answer that will not come.
func TestFencesEndWithTheirConnectionAndWithRun(t *testing.T) {
	pool := testenv.Pool(t, testenv.Database(t))
	f := sender.NewFence(pool.Config().ConnConfig, slog.New(slog.DiscardHandler))
	stop := testenv.Background(t, "fence", f.Run)
	ctx := context.Background()
	var held []context.Context
	for _, d := range []string{"a.test", "b.test"} {
		h, err := f.Acquire(ctx, d)
		if err != nil || h == nil {
			t.Fatalf("taking %s: %v", d, err)
		}
		held = append(held, h)
	}
	var killed int
	if err := pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM (SELECT DISTINCT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) AS p`).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d fence connections (%v), want 1", killed, err)
	}
	for i, h := range held {
		testenv.Eventually(t, 5*time.Second, fmt.Sprintf("fence %d ended", i), func() bool { return h.Err() != nil })
	}
	testenv.Eventually(t, 5*time.Second, "a.test taken again on a new connection", func() bool {
		h, err := f.Acquire(ctx, "a.test")
		return err == nil && h != nil && h.Err() == nil
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if h, err := f.Acquire(ctx, "c.test"); err == nil {
		t.Fatalf("Acquire after Run ended returned %v and no error", h)
	}
}
