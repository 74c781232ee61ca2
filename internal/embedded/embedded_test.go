package embedded_test

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/embedded"
)

// dataDir is a directory the postgres user can reach (t.TempDir's parents are 0700).
func dataDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "fedpipe-embedded-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func TestBrokerKeepsDataAcrossRestarts(t *testing.T) {
	dir := dataDir(t)
	log := slog.New(slog.DiscardHandler)
	b, err := embedded.StartBroker(embedded.BrokerConfig{DataDir: filepath.Join(dir, "kafka"), Partitions: 2}, log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(b.Addr(), "127.0.0.1:") {
		t.Fatalf("broker listens on %s, want loopback", b.Addr())
	}
	ctx := context.Background()
	c := &kafka.Client{Addr: kafka.TCP(b.Addr())}
	if _, err := c.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: "t", NumPartitions: 1, ReplicationFactor: 1}}}); err != nil {
		t.Fatal(err)
	}
	w := &kafka.Writer{Addr: kafka.TCP(b.Addr()), Topic: "t", RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	if err := w.WriteMessages(ctx, kafka.Message{Value: []byte("kept")}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	b.Close()

	b2, err := embedded.StartBroker(embedded.BrokerConfig{DataDir: filepath.Join(dir, "kafka")}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{b2.Addr()}, Topic: "t", Partition: 0, MaxWait: 500 * time.Millisecond})
	defer r.Close()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := r.FetchMessage(rctx)
	if err != nil || string(m.Value) != "kept" {
		t.Fatalf("after restart: %q, %v", m.Value, err)
	}
}

func TestBrokerPortTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	_, err = embedded.StartBroker(embedded.BrokerConfig{DataDir: dataDir(t), Port: port}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "taken") {
		t.Fatalf("got %v, want a clear port-taken error", err)
	}
}

func TestPrivatePostgresInitialisedOnceAndReused(t *testing.T) {
	dir := filepath.Join(dataDir(t), "pg")
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	pg, err := embedded.StartPostgres(ctx, embedded.PostgresConfig{DataDir: dir}, log)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if err := pg.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pg.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	pg2, err := embedded.StartPostgres(ctx, embedded.PostgresConfig{DataDir: dir}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer pg2.Stop(ctx)
	conn2, err := pgx.Connect(ctx, pg2.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close(ctx)
	var x int
	if err := conn2.QueryRow(ctx, "SELECT x FROM kept").Scan(&x); err != nil || x != 42 {
		t.Fatalf("cluster not reused: %d, %v", x, err)
	}
}

func TestNoBinariesIsAClearError(t *testing.T) {
	_, err := embedded.StartPostgres(context.Background(), embedded.PostgresConfig{DataDir: dataDir(t), BinDir: "/nonexistent"}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "no PostgreSQL server binaries") || !strings.Contains(err.Error(), "database.url") {
		t.Fatalf("got %v", err)
	}
}

// Run as root with a data directory the server's user cannot enter (a
// checkout under /root), the cluster moves to a directory of its own under
// /var/tmp, named after the data directory (the next start finds it
// again), and a note beside the data directory says where.
func TestUnreachableDataDirMovesTheCluster(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the move applies when fedpipe runs as root")
	}
	private := filepath.Join(dataDir(t), "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := embedded.PostgresConfig{DataDir: filepath.Join(private, "pg")}
	var moved string
	for i := 0; i < 2; i++ {
		pg, err := embedded.StartPostgres(context.Background(), cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		if moved == "" {
			moved = pg.DataDir()
			t.Cleanup(func() { os.RemoveAll(moved) })
		}
		if pg.DataDir() != moved || !strings.HasPrefix(moved, "/var/tmp/fedpipe-postgres-") {
			t.Fatalf("start %d: the cluster is in %s (first in %s)", i+1, pg.DataDir(), moved)
		}
		conn, err := pgx.Connect(context.Background(), pg.URL())
		if err != nil {
			t.Fatal(err)
		}
		conn.Close(context.Background())
		if err := pg.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	note, err := os.ReadFile(filepath.Join(private, "pg.location"))
	if err != nil || strings.TrimSpace(string(note)) != moved {
		t.Fatalf("the note beside the data directory says %q (%v), want %s", note, err, moved)
	}
}
