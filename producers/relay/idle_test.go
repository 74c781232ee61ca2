package relay_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/producers/relay"
	"github.com/fedpipe/fedpipe/schema"
)

// queryLog records the statements a pool runs.
type queryLog struct {
	mu  sync.Mutex
	sql []string
}

func (l *queryLog) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sql = append(l.sql, data.SQL)
	return ctx
}

func (l *queryLog) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// reads counts the statements that read rows of table (a stream's read, not
// the round's EXISTS question).
func (l *queryLog) reads(table string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, q := range l.sql {
		if strings.Contains(q, "FROM "+table+" WHERE") && strings.Contains(q, "ORDER BY") {
			n++
		}
	}
	return n
}

// A round reads only the streams with rows in its span: events alone read
// only the events (the idle streams' positions still move on, so they are
// not asked about the same span again), then presence alone reads only
// presence_stream. One statement per round asks which streams have rows.
func TestIdleStreamsAreNotRead(t *testing.T) {
	ctx := context.Background()
	k := testenv.NewKafka(t)
	cfg, err := pgxpool.ParseConfig(testenv.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	log := &queryLog{}
	cfg.ConnConfig.Tracer = log
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	writer := func(name string) relay.Writer {
		w := kafkaio.NewPartitionWriter([]string{k.Addr}, k.CreateTopic(t, name, 2, nil))
		t.Cleanup(func() { w.Close() })
		return w
	}
	r, err := relay.New(relay.Config{Instance: "test", PollInterval: 5 * time.Millisecond}, pool, writer("room"), writer("state"), slog.New(slog.DiscardHandler), prometheus.NewRegistry(),
		relay.WithPresence(writer("presence")), relay.WithToDevice(writer("todevice")), relay.WithDeviceLists(writer("devicelists")), relay.WithReceipts(writer("receipts")))
	if err != nil {
		t.Fatal(err)
	}
	testenv.Background(t, "relay", r.Run)
	idle := []string{"presence_stream", "device_federation_outbox", "device_lists_stream", "receipts_stream"}
	streams := []string{"events", "presence", "todevice", "devicelists", "receipts"}
	allAt := func(pos int64) func() bool {
		return func() bool {
			for _, s := range streams {
				if storedPosition(t, pool, s) < pos {
					return false
				}
			}
			return true
		}
	}

	var batch []outbox.EventWithDeltas
	for i := range 20 {
		batch = append(batch, ev("!idle:hs.test", i, ""))
	}
	positions, err := outbox.PersistBatch(ctx, pool, batch)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "every stream's position to pass the events", allAt(positions[len(positions)-1]))
	if log.reads("events") == 0 {
		t.Fatal("the events were published without reading them")
	}
	for _, table := range idle {
		if n := log.reads(table); n > 0 {
			t.Errorf("%s, with no rows, was read %d times", table, n)
		}
	}

	eventReads := log.reads("events")
	pos := upsertPresence(t, &env{pool: pool}, "@idle:hs.test", "online")
	testenv.Eventually(t, 20*time.Second, "every stream's position to pass the presence row", allAt(pos))
	if n := log.reads("presence_stream"); n == 0 {
		t.Error("the presence row was published without reading presence_stream")
	}
	if n := log.reads("events") - eventReads; n > 0 {
		t.Errorf("events, with no rows after the presence row's round began, read %d more times", n)
	}
	for _, table := range idle[1:] {
		if n := log.reads(table); n > 0 {
			t.Errorf("%s, with no rows, was read %d times", table, n)
		}
	}
	log.mu.Lock()
	exists := 0
	for _, q := range log.sql {
		if strings.HasPrefix(q, "SELECT EXISTS") {
			exists++
		}
	}
	log.mu.Unlock()
	if exists == 0 {
		t.Errorf("no round asked which streams have rows: %d statements", len(log.sql))
	}
}
