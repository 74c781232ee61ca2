package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/fedpipe/fedpipe/federation/signing"
	"github.com/fedpipe/fedpipe/internal/config"
	"github.com/fedpipe/fedpipe/internal/embedded"
	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/schema"
)

// infra is what every stage stands on: configuration, logger, metrics registry,
// brokers, database, signing key. Embedded parts are started when none are configured.
type infra struct {
	cfg     config.Config
	log     *slog.Logger
	reg     *prometheus.Registry
	brokers []string
	pool    *pgxpool.Pool
	key     *signing.Key
	closers []func(context.Context) error
	// listeners maps a listener name (ingest, admin) to the address it bound.
	listeners map[string]string
	// handlers maps a listener name to what it serves.
	handlers map[string]http.Handler
}

// startInfra brings up brokers and database (embedded when not configured), applies
// the migrations, creates the topics and loads the signing key. Close undoes it.
func startInfra(ctx context.Context, cfg config.Config, log *slog.Logger, needKey bool) (_ *infra, err error) {
	in := &infra{cfg: cfg, log: log, reg: prometheus.NewRegistry(), brokers: cfg.Kafka.Brokers, listeners: map[string]string{}, handlers: map[string]http.Handler{}}
	in.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	defer func() {
		if err != nil {
			_ = in.Close()
		}
	}()
	embedBroker, embedDB := cfg.Embedded()
	if embedBroker || embedDB {
		if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
			return nil, fmt.Errorf("creating data directory %s: %w", cfg.DataDir, err)
		}
	}
	dbURL := cfg.Database.URL
	if embedDB {
		log.Info("no database.url configured: starting a private PostgreSQL cluster", "dir", filepath.Join(cfg.DataDir, "postgres"))
		pg, err := embedded.StartPostgres(ctx, embedded.PostgresConfig{DataDir: abs(filepath.Join(cfg.DataDir, "postgres")), Port: cfg.Database.EmbeddedPort}, log)
		if err != nil {
			return nil, fmt.Errorf("starting the private PostgreSQL (set database.url to use your own): %w", err)
		}
		in.closers = append(in.closers, pg.Stop)
		dbURL = pg.URL()
	}
	if embedBroker {
		b, err := embedded.StartBroker(embedded.BrokerConfig{DataDir: abs(filepath.Join(cfg.DataDir, "kafka")), Port: cfg.Kafka.EmbeddedPort, Partitions: cfg.Kafka.Partitions}, log)
		if err != nil {
			return nil, fmt.Errorf("starting the embedded Kafka broker (set kafka.brokers to use your own): %w", err)
		}
		in.closers = append(in.closers, func(context.Context) error { b.Close(); return nil })
		in.brokers = []string{b.Addr()}
		log.Info("no kafka.brokers configured: embedded broker listening", "addr", b.Addr())
	}
	pcfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, fmt.Errorf("database.url: %w", err)
	}
	pcfg.MaxConns = int32(cfg.Database.MaxConns)
	in.pool, err = pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	if err := schema.Migrate(ctx, in.pool); err != nil {
		return nil, fmt.Errorf("applying migrations: %w", err)
	}
	if err := kafkaio.CreateTopics(ctx, in.brokers, topicsConfig(cfg), log); err != nil {
		return nil, fmt.Errorf("creating topics: %w", err)
	}
	if needKey {
		if in.key, err = loadOrCreateKey(cfg, log); err != nil {
			return nil, err
		}
	}
	return in, nil
}

func topicsConfig(cfg config.Config) kafkaio.TopicsConfig {
	return kafkaio.TopicsConfig{
		Prefix:             cfg.Kafka.TopicPrefix,
		Partitions:         cfg.Kafka.Partitions,
		OutboundPartitions: cfg.Kafka.OutboundPartitions,
		ReplicationFactor:  cfg.Kafka.ReplicationFactor,
	}
}

// loadOrCreateKey loads the signing key; the default key path under data_dir is
// generated on first run, an explicitly configured one must exist.
func loadOrCreateKey(cfg config.Config, log *slog.Logger) (*signing.Key, error) {
	path := cfg.KeyPath()
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) && cfg.SigningKeyPath == "" {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
		}
		k, err := signing.WriteNewKeyFile(path)
		if err != nil {
			return nil, err
		}
		log.Info("generated a new signing key", "path", path, "key_id", k.ID)
		return k, nil
	}
	keys, err := signing.LoadKeyFile(path)
	if err != nil {
		return nil, err
	}
	return keys[0], nil
}

// Close stops what startInfra started, in reverse order.
func (in *infra) Close() error {
	if in.pool != nil {
		in.pool.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for i := len(in.closers) - 1; i >= 0; i-- {
		errs = append(errs, in.closers[i](ctx))
	}
	in.closers = nil
	return errors.Join(errs...)
}

func abs(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
