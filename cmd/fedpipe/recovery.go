package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/fedpipe/fedpipe/consumers/offsets"
	"github.com/fedpipe/fedpipe/consumers/router"
	"github.com/fedpipe/fedpipe/consumers/sender"
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
	cfg, err := loadConfig(fs, configFlags(fs, toolKeys...), args)
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

// cmdResend makes a destination that lost data catch up from a stream
// position or a time (sender.Resend), as the admin API's resend route does.
func cmdResend(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("resend", " --destination D (--from-position N | --from-time T)",
		"Send a remote that lost data, through catch-up (paced, one room per transaction), the latest of our events since a\n"+
			"stream position or a time in every room it is joined to; it fetches the earlier ones from the homeserver.", stderr)
	cfgPath := configFlags(fs, append([]string{"server_name"}, toolKeys...)...)
	dest := fs.String("destination", "", "the remote server name")
	fromPos := fs.Int64("from-position", -1, "stream position (events after it)")
	fromTime := fs.String("from-time", "", "time events were stored from, RFC 3339 (2026-12-01T10:00:00Z)")
	cfg, err := loadConfig(fs, cfgPath, args)
	if err != nil {
		return err
	}
	if *dest == "" || (*fromPos < 0) == (*fromTime == "") {
		return errors.New("resend: give --destination and exactly one of --from-position and --from-time")
	}
	in, err := startInfra(ctx, cfg, newLogger(cfg.LogLevel, stderr), false)
	if err != nil {
		return err
	}
	defer in.Close()
	from := *fromPos
	if *fromTime != "" {
		t, err := time.Parse(time.RFC3339, *fromTime)
		if err != nil {
			return fmt.Errorf("resend: --from-time: %w", err)
		}
		if from, err = sender.PositionAt(ctx, in.pool, t); err != nil {
			return err
		}
	}
	rooms, err := sender.Resend(ctx, in.pool, *dest, cfg.ServerName, from)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: the latest event since position %d of %d rooms recorded for catch-up; the sender member owning it was told\n", *dest, from, rooms)
	return nil
}
