package runtime_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/consumers/runtime"
)

// gatedWriter holds each write until released, and remembers what it wrote.
type gatedWriter struct {
	mu      sync.Mutex
	written []string
	entered chan struct{}
	release chan struct{}
}

func (g *gatedWriter) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	g.entered <- struct{}{}
	select {
	case <-g.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, m := range msgs {
		g.written = append(g.written, string(m.Value))
	}
	return nil
}

// A revoked partition's records still queued are dropped, and Settle waits for
// the batch already on its way: after Close nothing of the old owner's can land
// behind the new owner's records.
func TestRevokedWritesAreDroppedAndSettleWaitsForTheBatchInFlight(t *testing.T) {
	gw := &gatedWriter{entered: make(chan struct{}, 4), release: make(chan struct{})}
	b := runtime.NewBatchWriter(gw, 1, 0, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	runCtx, stop := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- b.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-runErr; err != nil {
			t.Errorf("run: %v", err)
		}
	}()

	gen, revoke := context.WithCancel(context.Background())
	var mu sync.Mutex
	var done []string
	record := func(v string) func() { return func() { mu.Lock(); done = append(done, v); mu.Unlock() } }
	if err := b.Write(gen, []kafka.Message{{Value: []byte("old-1")}}, record("old-1")); err != nil {
		t.Fatal(err)
	}
	<-gw.entered // old-1 is on its way (maxBatch 1: a batch of its own)
	if err := b.Write(gen, []kafka.Message{{Value: []byte("old-2")}}, record("old-2")); err != nil {
		t.Fatal(err)
	}
	revoke() // the generation ends; the partition's Close settles
	settled := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		settled <- b.Settle(ctx)
	}()
	select {
	case err := <-settled:
		t.Fatalf("Settle returned (%v) while old-1 was still being written", err)
	case <-time.After(200 * time.Millisecond): // a window in which Settle must not return
	}
	gw.release <- struct{}{} // old-1 is acknowledged
	if err := <-settled; err != nil {
		t.Fatal(err)
	}

	// The new owner writes; old-2 must never be written, nor reported done.
	if err := b.Write(context.Background(), []kafka.Message{{Value: []byte("new-1")}}, record("new-1")); err != nil {
		t.Fatal(err)
	}
	<-gw.entered
	gw.release <- struct{}{}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(done)
		mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("done %v, want old-1 and new-1", done)
		}
		time.Sleep(5 * time.Millisecond)
	}
	gw.mu.Lock()
	defer gw.mu.Unlock()
	if len(gw.written) != 2 || gw.written[0] != "old-1" || gw.written[1] != "new-1" {
		t.Fatalf("written %v, want old-1 then new-1 (old-2 dropped)", gw.written)
	}
	mu.Lock()
	defer mu.Unlock()
	if done[0] != "old-1" || done[1] != "new-1" {
		t.Fatalf("done %v: a dropped record must not be reported done", done)
	}
}
