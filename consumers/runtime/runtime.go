// Package runtime runs fedpipe's consumer groups: partition ownership through
// kafka-go's ConsumerGroup/Generation API, FetchMessage → handle → commit of a
// per-partition watermark, dead letters for records that can never be handled,
// and lag metrics. Every stage (router, sender) plugs into it as a Stage.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
)

// Stage opens a handler for each partition the member is assigned in a generation.
type Stage interface {
	Open(ctx context.Context, topic string, partition int) (PartitionHandler, error)
}

// PartitionHandler handles one partition's records in offset order.
type PartitionHandler interface {
	// Handle is called for each record in order. It calls done exactly once when
	// the record is fully handled (possibly later, from another goroutine). It
	// returns an error wrapping ErrPoison, or a PostgreSQL error of SQLSTATE
	// class 22 or 23 (IsPoison), for a record that can never be handled (it
	// then goes to the dead-letter topic and counts as done); any other error
	// is transient: the runtime retries the same record with backoff.
	Handle(ctx context.Context, m kafka.Message, done func()) error
	// Close is called when the partition is revoked or the member stops; it must
	// stop and drain the partition's work (in-flight work finished or abandoned,
	// nothing running afterwards) before it returns.
	Close(ctx context.Context) error
}

// Group is one member of a consumer group.
type Group struct {
	cfg      Config
	stage    Stage
	log      *slog.Logger
	m        *metrics
	deadW    *kafka.Writer
	dead     *kafkaio.ConsumedDeadLetters
	fatalErr chan error
}

// New returns a group member running stage.
func New(cfg Config, stage Stage, logger *slog.Logger, reg Registerer) (*Group, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(reg, cfg.GroupID)
	if err != nil {
		return nil, err
	}
	deadW := kafkaio.NewWriter(cfg.Brokers, cfg.DeadLetterTopic)
	return &Group{cfg: cfg, stage: stage, log: logger.With("group", cfg.GroupID), m: m, deadW: deadW,
		dead: &kafkaio.ConsumedDeadLetters{W: deadW, Group: cfg.GroupID, Instance: cfg.Instance}, fatalErr: make(chan error, 1)}, nil
}

// Run takes part in the group until ctx ends (nil) or a partition fails in a
// way that must not be skipped (the error: a dead letter that cannot be written).
// Beside it, the member watches the whole group for stalled partitions.
func (g *Group) Run(ctx context.Context) error {
	if g.cfg.StallAfter < 0 {
		return g.member(ctx)
	}
	eg, ctx := errgroup.WithContext(ctx)
	watchCtx, stopWatch := context.WithCancel(ctx)
	eg.Go(func() error {
		return newStallWatch(g.cfg, g.log, g.m.stalled).Run(watchCtx)
	})
	eg.Go(func() error {
		defer stopWatch()
		return g.member(ctx)
	})
	return eg.Wait()
}

// member takes part in the group's generations until ctx ends.
func (g *Group) member(ctx context.Context) error {
	defer g.deadW.Close()
	cg, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID: g.cfg.GroupID, Brokers: g.cfg.Brokers, Topics: g.cfg.Topics, StartOffset: g.cfg.StartOffset,
		SessionTimeout: g.cfg.SessionTimeout, RebalanceTimeout: g.cfg.RebalanceTimeout, HeartbeatInterval: g.cfg.HeartbeatInterval,
		JoinGroupBackoff: 500 * time.Millisecond, WatchPartitionChanges: true,
	})
	if err != nil {
		return fmt.Errorf("joining consumer group %s: %w", g.cfg.GroupID, err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var fatal error
	for {
		gen, err := cg.Next(runCtx)
		select {
		case fatal = <-g.fatalErr:
		default:
		}
		if fatal != nil || runCtx.Err() != nil {
			// Close makes this member leave and waits for the generation's
			// partition loops, which drain their handlers before returning.
			if cerr := cg.Close(); cerr != nil && fatal == nil && ctx.Err() == nil {
				return fmt.Errorf("leaving consumer group %s: %w", g.cfg.GroupID, cerr)
			}
			return fatal
		}
		if err != nil {
			if errors.Is(err, kafka.ErrGroupClosed) {
				return nil
			}
			g.log.Warn("consumer group generation failed; rejoining", "err", err)
			select {
			case <-runCtx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		g.m.rebalances.WithLabelValues().Inc()
		n, commits := 0, &committer{gen: gen}
		for topic, assigns := range gen.Assignments {
			for _, a := range assigns {
				p := &partition{g: g, commits: commits, topic: topic, id: a.ID, offset: a.Offset}
				gen.Start(func(gctx context.Context) {
					if err := p.run(gctx); err != nil {
						select {
						case g.fatalErr <- err:
						default:
						}
						cancel()
					}
				})
				n++
			}
		}
		g.log.Info("generation started", "generation", gen.ID, "member", gen.MemberID, "partitions", n)
	}
}
