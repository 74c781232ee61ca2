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

// Config configures a Group.
type Config struct {
	Brokers []string
	GroupID string
	Topics  []string
	// DeadLetterTopic receives poison records.
	DeadLetterTopic string
	// Instance names this member in logs and dead-letter headers.
	Instance string
	// CommitInterval is how often watermarks are committed.
	CommitInterval time.Duration
	// SessionTimeout, RebalanceTimeout and HeartbeatInterval tune the group
	// protocol: a killed member's partitions move after SessionTimeout.
	SessionTimeout, RebalanceTimeout, HeartbeatInterval time.Duration
	// StartOffset applies to partitions without a committed offset
	// (kafka.FirstOffset by default: nothing is skipped).
	StartOffset int64
	// MaxWait bounds how long a fetch waits for data (500 ms, Kafka's
	// fetch.max.wait.ms). A fetch returns as soon as there is data, so it costs
	// no latency; kafka-go also takes it as the deadline for the response's
	// first bytes, so a small value stalls a reader whose broker is slow to
	// answer (a loaded in-process broker: every fetch times out and is retried).
	MaxWait time.Duration
	// DrainTimeout bounds a PartitionHandler's Close: past it, the handler
	// cancels its work (the sender cancels its in-flight transactions). It
	// must be at most half of RebalanceTimeout (its default): a member
	// rejoins only once every revoked partition has drained, and a member
	// that rejoins after the rebalance timeout is expired while its handlers
	// may still be at work, and its partitions go to another member. The
	// other half covers noticing the rebalance (a heartbeat), the cancelled
	// work returning, the last commit and the join.
	DrainTimeout time.Duration
	// MaxInFlight bounds the records fetched but not done, per partition.
	// Records done after one that is not (a slow destination's transaction
	// holds the watermark; the other destinations of its partition go on)
	// do not count, up to maxTrackedPerInFlight times MaxInFlight records
	// above the watermark: what a crash then replays.
	MaxInFlight int
	// StallAfter is how long a partition of the group may have records waiting
	// with no committed progress before it counts as stalled
	// (fedpipe_consumer_stalled_partitions, a warning naming its owner). Every
	// member watches the whole group, so a partition held by a member that no
	// longer exists is seen too. Negative turns the watch off.
	StallAfter time.Duration
	// StallCheckInterval is how often the group's offsets are read for it.
	StallCheckInterval time.Duration
}

// Validate fills in defaults and reports invalid settings.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("no brokers"))
	}
	if c.GroupID == "" {
		errs = append(errs, errors.New("no group id"))
	}
	if len(c.Topics) == 0 {
		errs = append(errs, errors.New("no topics"))
	}
	if c.DeadLetterTopic == "" {
		errs = append(errs, errors.New("no dead-letter topic"))
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.CommitInterval, 200*time.Millisecond)
	def(&c.SessionTimeout, 10*time.Second)
	def(&c.RebalanceTimeout, 10*time.Second)
	def(&c.HeartbeatInterval, time.Second)
	def(&c.MaxWait, 500*time.Millisecond)
	def(&c.DrainTimeout, c.RebalanceTimeout/2)
	def(&c.StallAfter, time.Minute)
	def(&c.StallCheckInterval, 10*time.Second)
	if c.StartOffset == 0 {
		c.StartOffset = kafka.FirstOffset
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 10000
	}
	if c.Instance == "" {
		c.Instance = "fedpipe"
	}
	if c.DrainTimeout <= 0 || 2*c.DrainTimeout > c.RebalanceTimeout {
		errs = append(errs, fmt.Errorf("drain timeout %s must be positive and at most half the rebalance timeout %s, or a member still draining is expired and its partitions handled twice at once", c.DrainTimeout, c.RebalanceTimeout))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("consumer group %s: %w", c.GroupID, err)
	}
	return nil
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
		n := 0
		for topic, assigns := range gen.Assignments {
			for _, a := range assigns {
				p := &partition{g: g, gen: gen, topic: topic, id: a.ID, offset: a.Offset}
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
