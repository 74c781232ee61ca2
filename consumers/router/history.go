package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
)

// The router keeps every change of a user's joined-ness in
// router_membership_changes so that a replayed event is routed with the
// membership as of the position before it (store.joinedBefore). A replay only
// reaches records the room topic still holds, so history older than the topic's
// retention is needed only as far as it says who was joined then: the latest
// change of each user, and only if it is a join.
//
// The pruner deletes a change stored more than Keep ago when it is a leave, or
// when a later change of the same user in the same room was also stored more
// than Keep ago. That is safe for every record still on the topic: a room's
// records are handled in order by one partition, so every change stored before
// the cut-off has a position below any record written after it, and for such a
// position the latest change of each user below it is either one kept after the
// cut-off or the last one before it, kept if it is a join (an absent leave and a
// deleted leave both say "not joined").

// HistoryConfig configures the pruning of the router's membership history.
type HistoryConfig struct {
	// Keep is how long a superseded change is kept. Zero follows the room
	// topic: its retention.ms plus segment.ms plus HistoryMargin, read from the broker on
	// every round; a topic that keeps records forever keeps history forever.
	// Negative keeps history forever.
	Keep time.Duration
	// Interval is how often history is pruned. Default DefaultPruneInterval.
	Interval time.Duration
	// Chunk is the most old changes examined in one transaction, so pruning never
	// holds a long transaction (the relay waits for transactions in progress).
	// Default 1,000 (about 8 ms each; BenchmarkPruneHistory).
	Chunk int
}

const (
	// DefaultPruneInterval is HistoryConfig.Interval when it is zero.
	DefaultPruneInterval = time.Hour
	// HistoryMargin is added to how long the room topic can hold a record
	// (retention.ms plus segment.ms) when HistoryConfig.Keep follows it: the
	// router may lag behind the topic, and the broker checks retention
	// only every few minutes.
	HistoryMargin = 24 * time.Hour
)

// Validate fills the defaults of zero fields and reports every invalid
// field, each by name.
func (c *HistoryConfig) Validate() error {
	if c.Interval == 0 {
		c.Interval = DefaultPruneInterval
	}
	if c.Chunk == 0 {
		c.Chunk = 1000
	}
	var errs []error
	if c.Interval < 0 {
		errs = append(errs, fmt.Errorf("router: history prune Interval must be positive, got %s", c.Interval))
	}
	if c.Chunk < 0 {
		errs = append(errs, fmt.Errorf("router: history prune Chunk must be positive, got %d", c.Chunk))
	}
	return errors.Join(errs...)
}

// pruneLock is the advisory lock key that keeps pruning rounds of several
// router processes from deleting the same rows at once.
const pruneLock = 0x66656472 // "fedr"

// HistoryPruner deletes the membership history no replay can need. Every router
// process may run one: they take turns chunk by chunk.
type HistoryPruner struct {
	cfg     HistoryConfig
	pool    *pgxpool.Pool
	brokers []string
	topic   string
	log     *slog.Logger

	pruned prometheus.Counter
	rounds *prometheus.CounterVec
}

// NewHistoryPruner returns a pruner of the history of the rooms on roomTopic;
// brokers are asked the topic's retention when cfg.Keep is zero.
func NewHistoryPruner(cfg HistoryConfig, pool *pgxpool.Pool, brokers []string, roomTopic string, logger *slog.Logger, reg prometheus.Registerer) (*HistoryPruner, error) {
	var errs []error
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	if pool == nil || logger == nil {
		errs = append(errs, errors.New("router: history pruner needs a pool and a logger"))
	}
	if cfg.Keep == 0 && (len(brokers) == 0 || roomTopic == "") {
		errs = append(errs, errors.New("router: history kept as long as the room topic needs the brokers and the topic"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	p := &HistoryPruner{cfg: cfg, pool: pool, brokers: brokers, topic: roomTopic, log: logger,
		pruned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedpipe_router_history_pruned_total", Help: "Membership changes deleted from the router's history because no replay can need them.",
		}),
		rounds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedpipe_router_history_prune_rounds_total", Help: "Pruning rounds of the router's membership history, by result (done, kept: history is kept forever, error).",
		}, []string{"result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{p.pruned, p.rounds} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("router: registering metrics: %w", err)
			}
		}
	}
	return p, nil
}

// Run prunes at start and then every Interval until ctx ends. A failed round is
// logged and counted, and tried again at the next one: pruning is housekeeping,
// never a reason to stop routing.
func (p *HistoryPruner) Run(ctx context.Context) error {
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		p.round(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (p *HistoryPruner) round(ctx context.Context) {
	keep, err := p.Keep(ctx)
	if err == nil && keep < 0 {
		p.rounds.WithLabelValues("kept").Inc()
		return
	}
	var n int64
	if err == nil {
		n, err = p.Prune(ctx, keep)
	}
	if err != nil {
		if ctx.Err() == nil {
			p.rounds.WithLabelValues("error").Inc()
			p.log.Warn("pruning the membership history failed; trying again at the next round", "error", err, "next", p.cfg.Interval)
		}
		return
	}
	p.rounds.WithLabelValues("done").Inc()
	p.log.Info("pruned the membership history", "deleted", n, "kept_for", keep)
}

// Keep is how long superseded changes are kept now: the configured duration,
// or as long as the room topic can hold a record plus HistoryMargin. Kafka
// deletes a log segment whole once its newest record is older than retention.ms,
// and a segment takes records for up to segment.ms, so a record can outlive its
// retention by up to segment.ms (seven days by default). Negative means forever.
func (p *HistoryPruner) Keep(ctx context.Context) (time.Duration, error) {
	if p.cfg.Keep != 0 {
		return p.cfg.Keep, nil
	}
	cfg, err := kafkaio.TopicDurations(ctx, p.brokers, p.topic, "retention.ms", "segment.ms")
	if err != nil {
		return 0, err
	}
	retention, segment := cfg["retention.ms"], cfg["segment.ms"]
	if retention < 0 {
		return -1, nil
	}
	return retention + max(segment, 0) + HistoryMargin, nil
}

// Prune deletes the changes stored more than keep ago that no replay can need,
// a chunk per transaction, and returns how many it deleted. Chunks walk the old
// changes once, in the order they were stored, so the changes a round keeps are
// not examined again by every chunk. A chunk that finds another process pruning
// ends the round: that process goes on with it.
func (p *HistoryPruner) Prune(ctx context.Context, keep time.Duration) (int64, error) {
	if keep < 0 {
		return 0, nil
	}
	var total int64
	var from changeKey
	for {
		n, examined, busy, err := p.pruneChunk(ctx, keep, &from)
		total += n
		p.pruned.Add(float64(n))
		if err != nil {
			return total, err
		}
		if busy || examined < p.cfg.Chunk {
			return total, nil
		}
	}
}

// changeKey orders the changes of router_membership_changes as its stored_at
// index does.
type changeKey struct {
	storedAt       time.Time
	roomID, userID string
	position       int64
}

// pruneChunk examines up to Chunk old changes after from, deletes those no
// replay can need, and moves from past them.
func (p *HistoryPruner) pruneChunk(ctx context.Context, keep time.Duration, from *changeKey) (deleted int64, examined int, busy bool, err error) {
	err = pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT NOT pg_try_advisory_xact_lock($1)`, pruneLock).Scan(&busy); err != nil || busy {
			return err
		}
		// Every part of one statement sees the same snapshot, so a change
		// deleted here still counts as superseding an earlier one.
		var last *time.Time
		var room, user *string
		var pos *int64
		err := tx.QueryRow(ctx, `
			WITH cut AS (SELECT now() - make_interval(secs => $1) AS at),
			batch AS (
				SELECT c.stored_at, c.room_id, c.user_id, c.position, c.joined
				FROM router_membership_changes c, cut
				WHERE c.stored_at < cut.at AND (c.stored_at, c.room_id, c.user_id, c.position) > ($3, $4, $5, $6)
				ORDER BY c.stored_at, c.room_id, c.user_id, c.position
				LIMIT $2),
			gone AS (
				DELETE FROM router_membership_changes d
				USING batch b, cut
				WHERE d.room_id = b.room_id AND d.user_id = b.user_id AND d.position = b.position
				  AND (NOT b.joined OR EXISTS (
					SELECT 1 FROM router_membership_changes l
					WHERE l.room_id = b.room_id AND l.user_id = b.user_id
					  AND l.position > b.position AND l.stored_at < cut.at))
				RETURNING 1),
			last AS (
				SELECT stored_at, room_id, user_id, position FROM batch
				ORDER BY stored_at DESC, room_id DESC, user_id DESC, position DESC LIMIT 1)
			SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM batch),
				(SELECT stored_at FROM last), (SELECT room_id FROM last), (SELECT user_id FROM last), (SELECT position FROM last)`,
			keep.Seconds(), p.cfg.Chunk, from.storedAt, from.roomID, from.userID, from.position,
		).Scan(&deleted, &examined, &last, &room, &user, &pos)
		if err == nil && last != nil {
			*from = changeKey{storedAt: *last, roomID: *room, userID: *user, position: *pos}
		}
		return err
	})
	if err != nil {
		return 0, 0, false, fmt.Errorf("pruning the membership history: %w", err)
	}
	return deleted, examined, busy, nil
}
