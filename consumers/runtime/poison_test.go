package runtime_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// pgStage stores each record's value as a row, the records that arrive
// together in one transaction (runtime.Batch), as the presence stage does.
type pgStage struct{ pool *pgxpool.Pool }

func (s pgStage) Open(context.Context, string, int) (runtime.PartitionHandler, error) {
	h := &pgHandler{}
	h.batch = runtime.Batch[string]{Max: 100, Flush: func(ctx context.Context, values []string, done func()) error {
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			for _, v := range values {
				if _, err := tx.Exec(ctx, `INSERT INTO stored (v) VALUES ($1)`, v); err != nil {
					return fmt.Errorf("storing %q: %w", v, err)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		done()
		return nil
	}}
	return h, nil
}

type pgHandler struct{ batch runtime.Batch[string] }

func (h *pgHandler) Handle(ctx context.Context, m kafka.Message, done func()) error {
	return h.batch.Add(ctx, m, string(m.Value), done)
}

func (h *pgHandler) Close(context.Context) error { h.batch.Close(); return nil }

// TestRecordsPostgreSQLRefusesAreDeadLettered: a NUL in text (SQLSTATE 22021)
// and a violated check constraint (23514) were taken for transient failures
// and retried for ever, freezing the partition. Among records stored together
// only those are dead-lettered; the others are stored and the partition moves on.
func TestRecordsPostgreSQLRefusesAreDeadLettered(t *testing.T) {
	cluster, addr := testenv.Broker(t)
	for name, parts := range map[string]int32{"in": 1, "dead": 1} {
		if err := cluster.CreateTopic(name, parts, nil); err != nil {
			t.Fatal(err)
		}
	}
	pool := testenv.Pool(t, testenv.Database(t))
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE stored (v text NOT NULL CHECK (length(v) < 10))`); err != nil {
		t.Fatal(err)
	}
	values := []string{"ok1", "nul\x00", "ok2", "much too long", "ok3"}
	w := &kafka.Writer{Addr: kafka.TCP(addr), Topic: "in", RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	var msgs []kafka.Message
	for _, v := range values {
		msgs = append(msgs, kafka.Message{Value: []byte(v)})
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil { // one batch: fetched, and so stored, together
		t.Fatal(err)
	}
	w.Close()

	reg := prometheus.NewRegistry()
	grp, err := runtime.New(runtime.Config{Brokers: []string{addr}, GroupID: "pg", Topics: []string{"in"}, DeadLetterTopic: "dead", Instance: "t"},
		pgStage{pool}, slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatal(err)
	}
	gctx, cancel := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(gctx)
	g.Go(func() error { return grp.Run(gctx) })
	defer func() {
		cancel()
		if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("group: %v", err)
		}
	}()

	var stored []string
	testenv.Eventually(t, 30*time.Second, "the good records stored", func() bool {
		rows, err := pool.Query(ctx, `SELECT v FROM stored ORDER BY v`)
		if err != nil {
			t.Fatal(err)
		}
		if stored, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			t.Fatal(err)
		}
		return len(stored) == 3
	})
	if !slices.Equal(stored, []string{"ok1", "ok2", "ok3"}) {
		t.Errorf("stored %q", stored)
	}
	dead := readTopic(t, addr, "dead")
	var got []string
	for _, m := range dead {
		got = append(got, string(m.Value))
		if header(m, "deadletter_reason") == "" || header(m, "source_topic") != "in" {
			t.Errorf("dead letter %q headers %v", m.Value, m.Headers)
		}
	}
	if !slices.Equal(got, []string{"nul\x00", "much too long"}) {
		t.Errorf("dead letters %q, want the NUL and the too long value", got)
	}
	testenv.Eventually(t, 10*time.Second, "the partition committed to its end", func() bool {
		of, err := (&kafka.Client{Addr: kafka.TCP(addr)}).OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: "pg", Topics: map[string][]int{"in": {0}}})
		return err == nil && len(of.Topics["in"]) == 1 && of.Topics["in"][0].CommittedOffset == int64(len(values))
	})
}
