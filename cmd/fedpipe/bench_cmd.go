package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/config"
)

// cmdBench runs the end-to-end measurement of BenchmarkEndToEnd on the
// operator's brokers and database (or the embedded ones): a generated load
// through relay, router and sender to simulated remote servers on loopback,
// every delivery checked, then each stage alone; a progress line every second
// on stderr, the table of rates, ratios, latency and memory on stdout.
func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench", "", "Measure fedpipe end to end on these brokers and this database (embedded ones when none are configured): "+
		"a generated load through relay, router and sender to simulated remote servers on loopback, every delivery checked, "+
		"then each stage alone in the same run (outbox insert, relay, router, raw kafka-go, transaction build+sign, HTTPS send). "+
		"Prints a progress line every second on stderr and a table of every stage's rate, fedpipe's share of it, latency and memory. "+
		"On configured brokers it works under a topic prefix of its own and deletes its topics and groups afterwards; "+
		"on a configured database it creates a database of its own on that server (the role needs CREATEDB) and drops it afterwards.", stderr)
	path := configFlags(fs, benchKeys...)
	rooms := fs.Int("rooms", 1000, "rooms of the load")
	servers := fs.Int("servers", 50, "simulated remote homeservers")
	events := fs.Int("events", 100000, "events after the initial joins")
	rate := fs.Int("rate", 0, "events/s to ingest at (0: as fast as PostgreSQL takes them; latency then includes the backlog)")
	timeout := fs.Duration("timeout", 30*time.Minute, "how long to wait for every delivery, and for each stage alone")
	cfg, err := loadConfig(fs, path, args)
	if err != nil {
		return err
	}
	if *rooms <= 0 || *servers <= 0 || *events < 0 || *rate < 0 || *timeout <= 0 {
		return errors.New("bench: --rooms, --servers and --timeout must be positive, --events and --rate not negative")
	}
	if cfg.LogLevel == config.Default().LogLevel {
		cfg.LogLevel = "warn" // the stages' start-up lines would bury the progress lines
	}
	log := newLogger(cfg.LogLevel, stderr)
	cleanup, err := demoPlace(&cfg, "bench", stderr)
	if err != nil {
		return err
	}
	defer cleanup()
	cfg.Admin.Listen = ""
	if cfg.Database.URL != "" {
		drop, err := benchDatabase(ctx, &cfg, stderr)
		if err != nil {
			return err
		}
		defer drop()
	}
	if len(cfg.Kafka.Brokers) > 0 {
		cfg.Kafka.TopicPrefix += "-bench-" + randomID()
		fmt.Fprintf(stderr, "bench: topics and groups %s.*, deleted at the end\n", cfg.Kafka.TopicPrefix)
		defer deleteBenchTopics(cfg.Kafka.Brokers, cfg.Kafka.TopicPrefix, log)
	}
	d, err := startDemo(ctx, cfg, *servers, log)
	if err != nil {
		return err
	}
	defer d.close()
	size := benchSize{rooms: *rooms, servers: *servers, events: *events, rate: *rate, timeout: *timeout, baselines: true}
	fmt.Fprintf(stderr, "bench: %d rooms, %d remote servers, %d events\n", size.rooms, size.servers, size.events)
	r, err := (&benchRun{cfg: d.cfg, in: d.in, recv: d.recv, progress: stderr}).run(ctx, size)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	printBenchTable(stdout, r)
	return nil
}

// benchKeys are the configuration keys the bench honours: the infrastructure
// without the admin listener (it serves none), the relay's and the router's,
// and the sender's that do not point at the remotes (the simulated ones take
// their place).
var benchKeys = slices.Concat(toolKeys, []string{"server_name", "relay", "router",
	"federation.request_timeout", "federation.backoff_initial", "federation.backoff_max", "federation.max_transaction_bytes", "federation.linger"})

// benchDatabase creates a database of the bench's own on the server of
// database.url and points cfg at it; drop drops it.
func benchDatabase(ctx context.Context, cfg *config.Config, stderr io.Writer) (drop func(), err error) {
	u, err := url.Parse(cfg.Database.URL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, fmt.Errorf("bench: database.url %q: want a postgres:// URL (%v)", cfg.Database.URL, err)
	}
	name := "fedpipe_bench_" + randomID()
	admin := cfg.Database.URL
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return nil, fmt.Errorf("bench: connecting to database.url: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return nil, fmt.Errorf("bench: creating database %s (the bench needs a database of its own; the role needs CREATEDB): %w", name, err)
	}
	u.Path = "/" + name
	cfg.Database.URL = u.String()
	fmt.Fprintf(stderr, "bench: database %s, dropped at the end\n", name)
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, admin)
		if err == nil {
			defer c.Close(ctx)
			_, err = c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		}
		if err != nil {
			fmt.Fprintf(stderr, "bench: dropping database %s: %v\n", name, err)
		}
	}, nil
}

// deleteBenchTopics deletes the topics and consumer groups under prefix
// (the bench's own), reporting what it could not.
func deleteBenchTopics(brokers []string, prefix string, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := &kafka.Client{Addr: kafka.TCP(brokers...)}
	var topics, groups []string
	// The topics from a connection of their own: a Client's metadata may
	// come from its transport's cache, without the latest topics.
	parts, err := readPartitions(ctx, brokers[0])
	if err == nil {
		for _, p := range parts {
			if strings.HasPrefix(p.Topic, prefix) && !slices.Contains(topics, p.Topic) {
				topics = append(topics, p.Topic)
			}
		}
		var lg *kafka.ListGroupsResponse
		if lg, err = c.ListGroups(ctx, &kafka.ListGroupsRequest{}); err == nil {
			for _, g := range lg.Groups {
				if strings.HasPrefix(g.GroupID, prefix) {
					groups = append(groups, g.GroupID)
				}
			}
		}
	}
	if err == nil && len(groups) > 0 {
		var resp *kafka.DeleteGroupsResponse
		if resp, err = c.DeleteGroups(ctx, &kafka.DeleteGroupsRequest{GroupIDs: groups}); err == nil {
			for _, e := range resp.Errors {
				err = errors.Join(err, e)
			}
		}
	}
	if len(topics) > 0 {
		resp, terr := c.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: topics})
		if terr == nil {
			for _, e := range resp.Errors {
				terr = errors.Join(terr, e)
			}
		}
		err = errors.Join(err, terr)
	}
	if err != nil {
		log.Warn("deleting the bench's topics and groups", "prefix", prefix, "err", err)
	}
}

// readPartitions lists every topic's partitions, asked of broker on a
// connection of its own.
func readPartitions(ctx context.Context, broker string) ([]kafka.Partition, error) {
	conn, err := kafka.DialContext(ctx, "tcp", broker)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(deadline); err != nil {
			return nil, err
		}
	}
	return conn.ReadPartitions()
}
