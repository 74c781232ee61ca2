package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/fedpipe/fedpipe/consumers/offsets"
	"github.com/fedpipe/fedpipe/consumers/router"
	"github.com/fedpipe/fedpipe/schema"
)

func cmdRebuild(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return subcommands(ctx, "rebuild", map[string]command{
		"router": {"rebuild the router's membership tables from the compacted state topic (the router group stopped)", cmdRebuildRouter},
	}, args, stdout, stderr)
}

// cmdRebuildRouter replaces the router's membership tables with what
// <prefix>.state holds, printing progress to stderr and a summary to stdout.
func cmdRebuildRouter(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("rebuild router", "", "Rebuild the router's membership tables (router_rooms, router_room_members, router_membership_changes) from the\n"+
		"compacted <prefix>.state topic, sending nothing. Refused while the router group has members: stop them first.", stderr)
	cfg, err := loadConfig(fs, configFlags(fs, infraKeys...), args)
	if err != nil {
		return err
	}
	log := newLogger(cfg.LogLevel, stderr)
	in, err := startInfra(ctx, cfg, log, false)
	if err != nil {
		return err
	}
	defer in.Close()
	prefix := cfg.Kafka.TopicPrefix
	group := groupID(prefix, routerGroup)
	if err := offsets.New(in.brokers).Inactive(ctx, group); err != nil {
		return fmt.Errorf("rebuild router: %w", err)
	}
	topic := schema.Topic(prefix, "state")
	sum, err := router.Rebuild(ctx, in.pool, in.brokers, topic, func(p router.RebuildProgress) {
		fmt.Fprintf(stderr, "rebuild router: %d of %d records of %s (%.0f%%), %.0f records/s, about %s left\n",
			p.Read, p.Total, topic, 100*float64(p.Read)/float64(max(p.Total, 1)), p.Rate(), p.ETA().Round(time.Second))
	})
	if err != nil {
		return fmt.Errorf("rebuild router: %w", err)
	}
	fmt.Fprintf(stdout, "rebuilt the router's membership from %d records of %s in %s: %d rooms, %d joined members\n",
		sum.Records, topic, sum.Elapsed.Round(time.Millisecond), sum.Rooms, sum.Members)
	return nil
}
