package relay_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/producers/relay"
	"github.com/fedpipe/fedpipe/schema"
)

// While a long transaction holds an unpublished position the relay waits for
// it, asking PostgreSQL quickly at first and then at most once per poll
// interval, not every 2 ms.
func TestLongTransactionIsWaitedForWithBackoff(t *testing.T) {
	c, addr := testenv.Broker(t)
	for _, tp := range []string{"fedpipe.room", "fedpipe.state"} {
		if err := c.CreateTopic(tp, 1, nil); err != nil {
			t.Fatal(err)
		}
	}
	pool := testenv.Pool(t, testenv.Database(t))
	ctx := context.Background()
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	w := func(topic string) *kafka.Writer {
		return &kafka.Writer{Addr: kafka.TCP(addr), Topic: topic, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	}
	room, state := w("fedpipe.room"), w("fedpipe.state")
	defer room.Close()
	defer state.Close()
	reg := prometheus.NewRegistry()
	const poll = 50 * time.Millisecond
	r, err := relay.New(relay.Config{Instance: "test", PollInterval: poll}, pool, room, state, slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatal(err)
	}
	long, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Rollback(ctx) //nolint:errcheck
	if _, err := outbox.Persist(ctx, long, []outbox.EventWithDeltas{ev("!aa:hs.test", 1, "")}); err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.PersistBatch(ctx, pool, []outbox.EventWithDeltas{ev("!aa:hs.test", 2, "")}); err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	var runErr error
	go func() { defer wg.Done(); runErr = r.Run(runCtx) }()
	defer func() {
		cancel()
		wg.Wait()
		if runErr != nil {
			t.Errorf("relay: %v", runErr)
		}
	}()

	testenv.Eventually(t, 10*time.Second, "the relay waiting on the long transaction", func() bool {
		return testenv.Value(t, reg, "fedpipe_relay_visibility_checks_total") > 0
	})
	before := testenv.Value(t, reg, "fedpipe_relay_visibility_checks_total")
	const held = time.Second
	time.Sleep(held) // the transaction stays open this long: the window being measured
	checks := testenv.Value(t, reg, "fedpipe_relay_visibility_checks_total") - before
	// Backing off to the poll interval: about held/poll checks (20), and a few
	// more for the quick start; polling every 2 ms would be about 500.
	if limit := float64(held/poll) + 10; checks > limit {
		t.Fatalf("%.0f visibility checks in %v while one transaction was open, want at most %.0f", checks, held, limit)
	}
	if err := long.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	msgs := readAll(t, addr, "fedpipe.room", 2)
	if len(msgs) != 2 {
		t.Fatalf("%d records after the commit, want both events", len(msgs))
	}
	t.Logf("%.0f checks in %v", checks, held)
}
