package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/schema"
)

// addPipelineCommands adds the commands that run or prepare the pipeline.
func addPipelineCommands(cmds map[string]command) {
	cmds["run"] = command{"run every stage in one process (embedded broker and PostgreSQL when none are configured)", cmdRun(allStages...)}
	cmds["relay"] = command{"run the relay: stream tables to Kafka", cmdRun("relay")}
	cmds["presence"] = command{"run a member of the fedpipe-presence consumer group (user syncs to presence, and its timers)", cmdRun("presence")}
	cmds["router"] = command{"run a member of the fedpipe-router consumer group", cmdRun("router")}
	cmds["sender"] = command{"run a member of the fedpipe-sender consumer group", cmdRun("sender")}
	cmds["ingest"] = command{"serve the ingest HTTP API", cmdRun("ingest")}
	cmds["keys"] = command{"serve fedpipe's signing keys (GET /_matrix/key/v2/server) on federation.listen", cmdRun("keys")}
	cmds["migrate"] = command{"apply the SQL migrations and exit", cmdMigrate}
	cmds["topics"] = command{"topics create: create the Kafka topics with their configs", cmdTopics}
	cmds["demo"] = command{"run everything plus simulated remote homeservers and a load generator, then report deliveries", cmdDemo}
}

func cmdMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, path := newFlagSet("migrate", stderr)
	cfg, err := loadConfig(fs, path, args)
	if err != nil {
		return err
	}
	if cfg.Database.URL == "" {
		return errors.New("migrate needs database.url (the private cluster of `fedpipe run` is migrated at every start)")
	}
	pool, err := pgxpool.New(ctx, cfg.Database.URL)
	if err != nil {
		return fmt.Errorf("database.url: %w", err)
	}
	defer pool.Close()
	if err := schema.Migrate(ctx, pool); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "migrations applied")
	return nil
}

func cmdTopics(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "create" {
		return errors.New("usage: fedpipe topics create [--config FILE] [--kafka.brokers=...]")
	}
	fs, path := newFlagSet("topics create", stderr)
	cfg, err := loadConfig(fs, path, args[1:])
	if err != nil {
		return err
	}
	if len(cfg.Kafka.Brokers) == 0 {
		return errors.New("topics create needs kafka.brokers (the embedded broker's topics are created at every start)")
	}
	if err := kafkaio.CreateTopics(ctx, cfg.Kafka.Brokers, topicsConfig(cfg), newLogger(cfg.LogLevel, stderr)); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "topics ready")
	return nil
}
