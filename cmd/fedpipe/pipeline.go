package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/schema"
)

// addPipelineCommands adds the commands that run or prepare the pipeline.
func addPipelineCommands(cmds map[string]command) {
	stage := func(name, summary string) {
		cmds[name] = command{summary, cmdRun(name, summary, slices.Concat(infraKeys, stageKeys[name]), name)}
	}
	const run = "run every stage in one process (embedded broker and PostgreSQL when none are configured)"
	cmds["run"] = command{run, cmdRun("run", run, nil, allStages...)}
	stage("relay", "run the relay: stream tables to Kafka")
	stage("presence", "run a member of the fedpipe-presence consumer group (user syncs to presence, and its timers)")
	stage("router", "run a member of the fedpipe-router consumer group")
	stage("sender", "run a member of the fedpipe-sender consumer group")
	stage("ingest", "serve the ingest HTTP API")
	stage("keys", "serve fedpipe's signing keys (GET /_matrix/key/v2/server) on federation.listen")
	cmds["migrate"] = command{"apply the SQL migrations to database.url and exit", cmdMigrate}
	cmds["topics"] = command{"topics create: create the Kafka topics with their configs", cmdTopics}
	cmds["demo"] = command{"run everything plus simulated remote homeservers and a load generator, then report deliveries", cmdDemo}
	cmds["bench"] = command{"measure throughput, latency and memory end to end and of each stage alone, on these brokers and database", cmdBench}
}

func cmdMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("migrate", "", "Apply the SQL migrations to database.url and exit (the private cluster of `fedpipe run` is migrated at every start).", stderr)
	cfg, err := loadConfig(fs, configFlags(fs, migrateKeys...), args)
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
	return subcommands(ctx, "topics", map[string]command{
		"create": {"create the Kafka topics on kafka.brokers with their configs (existing ones are kept)", cmdTopicsCreate},
	}, args, stdout, stderr)
}

func cmdTopicsCreate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("topics create", "", "Create the Kafka topics on kafka.brokers with their configs (the embedded broker's topics are created at every start).", stderr)
	cfg, err := loadConfig(fs, configFlags(fs, topicsKeys...), args)
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
