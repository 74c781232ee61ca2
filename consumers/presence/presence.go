// Package presence is the fedpipe-presence stage: a consumer-group stage over
// <prefix>.usersync that keeps which users sync on which instance, applies
// Synapse's presence rules and timers to local users, and writes a row to
// presence_stream whenever remote servers should be told (the relay publishes
// it to <prefix>.presence, and the router sends it to the servers sharing a
// room with the user).
//
// Per-user state lives in PostgreSQL (presence_state), changed with the user's
// row locked. The usersync topic is keyed by instance, so one user's records
// may reach several members; the lock puts them in order. Every member also
// runs the timers (Run), taking due users with SKIP LOCKED so members never
// wait on each other.
package presence

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/schema"
)

// Config configures the stage.
type Config struct {
	// ServerName is ours: records about users of other servers are refused.
	ServerName string
	// Prefix is the topic prefix.
	Prefix string
	// Timers are the presence timers (DefaultTimers when zero).
	Timers Timers
	// InstanceTimeout: an instance that sends nothing for this long has
	// vanished, and its users stop syncing there (Synapse's 5 minutes).
	// Sync workers send instance_alive well within it.
	InstanceTimeout time.Duration
	// SweepInterval is how often the timers are checked (1 s).
	SweepInterval time.Duration
	// SweepBatch is the most users one timer transaction handles (500).
	SweepBatch int
	// Now is the clock (time.Now); tests inject their own.
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	if c.Timers == (Timers{}) {
		c.Timers = DefaultTimers
	}
	if c.InstanceTimeout == 0 {
		c.InstanceTimeout = 5 * time.Minute
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = time.Second
	}
	if c.SweepBatch == 0 {
		c.SweepBatch = 500
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Validate reports invalid settings.
func (c Config) Validate() error {
	var errs []error
	if c.ServerName == "" {
		errs = append(errs, errors.New("server name must be set"))
	}
	if c.Prefix == "" {
		errs = append(errs, errors.New("topic prefix must be set"))
	}
	t := c.Timers
	if t.SyncTimeout <= 0 || t.Idle <= 0 || t.Granularity <= 0 || t.Ping <= 0 {
		errs = append(errs, errors.New("presence timers must be positive"))
	}
	if t.Ping+t.Granularity >= 30*time.Minute {
		errs = append(errs, fmt.Errorf("ping interval %s plus granularity %s must stay below the 30 minutes after which remote servers time a user out", t.Ping, t.Granularity))
	}
	if c.InstanceTimeout <= 0 || c.SweepInterval <= 0 || c.SweepBatch <= 0 {
		errs = append(errs, errors.New("instance timeout, sweep interval and sweep batch must be positive"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("presence: %w", err)
	}
	return nil
}

// Stage is the presence stage: runtime.New(cfg, stage, ...) runs its records,
// and Run its timers; both are the caller's to supervise.
type Stage struct {
	cfg  Config
	pool *pgxpool.Pool
	log  *slog.Logger
	m    metrics
}

// New returns the stage.
func New(cfg Config, pool *pgxpool.Pool, logger *slog.Logger, reg prometheus.Registerer) (*Stage, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if pool == nil || logger == nil {
		return nil, errors.New("presence: pool and logger are required")
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &Stage{cfg: cfg, pool: pool, log: logger, m: m}, nil
}

// Open implements runtime.Stage.
func (s *Stage) Open(_ context.Context, topic string, partition int) (runtime.PartitionHandler, error) {
	if want := schema.Topic(s.cfg.Prefix, "usersync"); topic != want {
		return nil, fmt.Errorf("presence: asked to handle topic %s, it reads %s", topic, want)
	}
	return &handler{s: s, topic: topic, partition: partition,
		batch: runtime.Batch[schema.UserSyncRecord]{Max: maxBatch, Flush: s.flush}}, nil
}

// handler applies one partition's records. Records that arrive together are
// applied together in one transaction (runtime.Batch): a burst of one user's
// updates becomes one stream write per batch instead of one per update.
type handler struct {
	s         *Stage
	topic     string
	partition int
	batch     runtime.Batch[schema.UserSyncRecord]
}

// maxBatch bounds the records applied in one transaction.
const maxBatch = 500

// Close implements runtime.PartitionHandler: kept records are abandoned, to
// be applied by the partition's next owner.
func (h *handler) Close(context.Context) error {
	h.batch.Close()
	return nil
}

// Handle keeps or applies a record (see handler); done runs once it is applied.
func (h *handler) Handle(ctx context.Context, m kafka.Message, done func()) error {
	rec, err := schema.DecodeUserSyncRecord(m.Value)
	if err == nil && rec.UserID != "" && !h.s.local(rec.UserID) {
		err = fmt.Errorf("%s record for %s, who is not a user of %s", rec.Kind, rec.UserID, h.s.cfg.ServerName)
	}
	if err != nil {
		if ferr := h.batch.FlushKept(ctx); ferr != nil {
			return ferr
		}
		return fmt.Errorf("%s/%d@%d: %w", h.topic, h.partition, m.Offset, runtime.Poison(err))
	}
	return h.batch.Add(ctx, m, rec, done)
}

// flush applies kept records in one transaction.
func (s *Stage) flush(ctx context.Context, recs []schema.UserSyncRecord, done func()) error {
	if err := s.apply(ctx, recs); err != nil {
		return err
	}
	for _, r := range recs {
		s.m.records.WithLabelValues(r.Kind).Inc()
	}
	s.m.batch.Observe(float64(len(recs)))
	done()
	return nil
}

func (s *Stage) local(userID string) bool {
	return mxid.ServerPart(userID) == s.cfg.ServerName // ServerName is never ""
}

// apply applies records in order in one transaction.
func (s *Stage) apply(ctx context.Context, recs []schema.UserSyncRecord) error {
	now := s.cfg.Now().UnixMilli()
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Clears split the records into runs: a clear touches users the run
		// does not name.
		start := 0
		for i, rec := range recs {
			if rec.Kind != schema.KindInstanceClear {
				continue
			}
			if err := s.applyRun(ctx, tx, recs[start:i], now); err != nil {
				return err
			}
			if _, err := s.clear(ctx, tx, rec.Instance, now); err != nil {
				return err
			}
			start = i + 1
		}
		return s.applyRun(ctx, tx, recs[start:], now)
	})
}

// applyRun applies records without clears: their users are locked at once (in
// a fixed order), their states computed in memory in record order, and each
// user's final state stored once, written to the stream when any of the
// records made news of it.
func (s *Stage) applyRun(ctx context.Context, tx pgx.Tx, recs []schema.UserSyncRecord, now int64) error {
	if len(recs) == 0 {
		return nil
	}
	// Syncs and keep-alives make an instance one whose silence means it
	// vanished; other records only show that a known one is alive (a
	// presence PUT through the ingest API names no sync worker).
	register, touch := map[string]bool{}, map[string]bool{}
	var users []string
	seenUser := map[string]bool{}
	for _, r := range recs {
		if r.Kind == schema.KindUserSync || r.Kind == schema.KindInstanceAlive {
			register[r.Instance] = true
		} else {
			touch[r.Instance] = true
		}
		if r.UserID != "" && !seenUser[r.UserID] {
			seenUser[r.UserID] = true
			users = append(users, r.UserID)
		}
	}
	b := &pgx.Batch{}
	for inst := range register {
		b.Queue(`INSERT INTO presence_instances (instance, last_seen_ms) VALUES ($1, $2)
			ON CONFLICT (instance) DO UPDATE SET last_seen_ms = GREATEST(presence_instances.last_seen_ms, EXCLUDED.last_seen_ms)`, inst, now)
	}
	for inst := range touch {
		if !register[inst] {
			b.Queue(`UPDATE presence_instances SET last_seen_ms = GREATEST(last_seen_ms, $2) WHERE instance = $1`, inst, now)
		}
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("recording instances: %w", err)
	}
	if len(users) == 0 {
		return nil
	}
	// The row locks come first, so a timer cannot judge a user on a sync
	// change this transaction has not committed.
	states, _, err := lockUsers(ctx, tx, users)
	if err != nil {
		return err
	}
	where, err := syncInstances(ctx, tx, users)
	if err != nil {
		return err
	}
	told := map[string]bool{}
	syncs := &pgx.Batch{}
	for _, r := range recs {
		if r.UserID == "" {
			continue
		}
		in := input{kind: r.Kind, presence: r.Presence, statusMsg: r.StatusMsg}
		if r.Kind == schema.KindUserSync {
			in.syncing = *r.Syncing
			if where[r.UserID] == nil {
				where[r.UserID] = map[string]bool{}
			}
			if in.syncing {
				where[r.UserID][r.Instance] = true
				syncs.Queue(`INSERT INTO presence_syncing (instance, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, r.Instance, r.UserID)
			} else {
				delete(where[r.UserID], r.Instance)
				syncs.Queue(`DELETE FROM presence_syncing WHERE instance = $1 AND user_id = $2`, r.Instance, r.UserID)
			}
		}
		prev, ok := states[r.UserID]
		if !ok {
			return fmt.Errorf("presence of %s: %w", r.UserID, errNoRow)
		}
		next, reason := s.cfg.Timers.step(prev, apply(prev, in, now), len(where[r.UserID]) > 0, now)
		states[r.UserID] = next
		if reason != reasonNone {
			told[r.UserID] = true
			s.m.told.WithLabelValues(reason, next.Presence).Inc()
		}
	}
	// The syncs and every user's final state, in one round trip.
	for _, u := range users {
		st := states[u]
		queueSave(syncs, st, s.cfg.Timers.nextCheck(st, len(where[u]) > 0), told[u])
	}
	if err := tx.SendBatch(ctx, syncs).Close(); err != nil {
		return fmt.Errorf("storing the presence of %d users: %w", len(users), err)
	}
	return nil
}

// update applies in (nil for a timer) to a locked user and stores the result.
func (s *Stage) update(ctx context.Context, tx pgx.Tx, states map[string]State, syncing map[string]bool, userID string, in input, now int64) error {
	prev, ok := states[userID]
	if !ok {
		return fmt.Errorf("presence of %s: %w", userID, errNoRow)
	}
	next := apply(prev, in, now)
	next, reason := s.cfg.Timers.step(prev, next, syncing[userID], now)
	if err := save(ctx, tx, next, s.cfg.Timers.nextCheck(next, syncing[userID]), reason != reasonNone); err != nil {
		return err
	}
	if reason != reasonNone {
		s.m.told.WithLabelValues(reason, next.Presence).Inc()
	}
	return nil
}

// clear ends every sync of an instance: each of its users who syncs nowhere
// else goes offline at once. It returns how many users it had.
func (s *Stage) clear(ctx context.Context, tx pgx.Tx, instance string, now int64) (int, error) {
	if _, err := tx.Exec(ctx, `DELETE FROM presence_instances WHERE instance = $1`, instance); err != nil {
		return 0, fmt.Errorf("clearing instance %s: %w", instance, err)
	}
	rows, err := tx.Query(ctx, `DELETE FROM presence_syncing WHERE instance = $1 RETURNING user_id`, instance)
	if err != nil {
		return 0, fmt.Errorf("clearing instance %s: %w", instance, err)
	}
	users, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(users) == 0 {
		if err != nil {
			err = fmt.Errorf("clearing instance %s: %w", instance, err)
		}
		return 0, err
	}
	states, syncing, err := lockUsers(ctx, tx, users)
	if err != nil {
		return 0, err
	}
	for _, u := range users {
		in := input{kind: kindCleared}
		if syncing[u] {
			in = input{kind: schema.KindUserSync, syncing: false} // still syncing elsewhere: only the sync time moves
		}
		if err := s.update(ctx, tx, states, syncing, u, in, now); err != nil {
			return 0, err
		}
	}
	return len(users), nil
}

// Run runs the timers until ctx ends: every SweepInterval it ends the syncs of
// instances that have vanished and applies the due timers. Failures are logged
// and retried at the next sweep.
func (s *Stage) Run(ctx context.Context) error {
	started := s.cfg.Now()
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		// Right after a start the stage may still be reading the instances'
		// recent records: it waits one timeout before judging them.
		expire := s.cfg.Now().Sub(started) > s.cfg.InstanceTimeout
		if _, err := s.Sweep(ctx, expire); err != nil && ctx.Err() == nil {
			s.m.sweepFailures.Inc()
			s.log.Warn("presence timers failed; retrying at the next sweep", "err", err)
		}
	}
}

// Sweep applies everything due now: vanished instances (when expire is set)
// and user timers. It returns how many users' timers it ran.
func (s *Stage) Sweep(ctx context.Context, expire bool) (int, error) {
	start := time.Now()
	defer func() { s.m.sweeps.Observe(time.Since(start).Seconds()) }()
	if expire {
		if err := s.expireInstances(ctx); err != nil {
			return 0, err
		}
	}
	total := 0
	for {
		n, err := s.sweepUsers(ctx)
		total += n
		if err != nil || n < s.cfg.SweepBatch {
			return total, err
		}
	}
}

func (s *Stage) expireInstances(ctx context.Context) error {
	now := s.cfg.Now().UnixMilli()
	for {
		var instance string
		var users int
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			err := tx.QueryRow(ctx, `SELECT instance FROM presence_instances WHERE last_seen_ms < $1 LIMIT 1 FOR UPDATE SKIP LOCKED`,
				now-s.cfg.InstanceTimeout.Milliseconds()).Scan(&instance)
			if err != nil {
				return err
			}
			users, err = s.clear(ctx, tx, instance, now)
			return err
		})
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("expiring instances: %w", err)
		}
		s.m.expired.Inc()
		if users == 0 {
			s.log.Info("sync worker silent without users; forgotten", "instance", instance, "timeout", s.cfg.InstanceTimeout)
			continue
		}
		s.log.Warn("sync worker vanished without clearing; its users stopped syncing there", "instance", instance, "users", users, "timeout", s.cfg.InstanceTimeout)
	}
}

// sweepUsers runs the timers of up to SweepBatch due users in one transaction.
func (s *Stage) sweepUsers(ctx context.Context) (int, error) {
	now := s.cfg.Now().UnixMilli()
	n := 0
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT user_id, state, status_msg, last_active_ts, last_user_sync_ts, last_federation_update_ts, currently_active
			FROM presence_state WHERE next_check_ms <= $1 ORDER BY next_check_ms LIMIT $2 FOR UPDATE SKIP LOCKED`, now, s.cfg.SweepBatch)
		if err != nil {
			return err
		}
		states, err := scanStates(rows)
		if err != nil || len(states) == 0 {
			return err
		}
		users := make([]string, 0, len(states))
		for u := range states {
			users = append(users, u)
		}
		syncing, err := syncingOf(ctx, tx, users)
		if err != nil {
			return err
		}
		for _, u := range users {
			if err := s.update(ctx, tx, states, syncing, u, input{}, now); err != nil {
				return err
			}
		}
		n = len(users)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("running presence timers: %w", err)
	}
	return n, nil
}

type metrics struct {
	records       *prometheus.CounterVec
	told          *prometheus.CounterVec
	expired       prometheus.Counter
	sweeps        prometheus.Histogram
	sweepFailures prometheus.Counter
	batch         prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	m := metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedpipe_presence_records_total", Help: "Usersync records applied, by kind.",
		}, []string{"kind"}),
		told: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedpipe_presence_stream_writes_total", Help: "Presence states written for remote servers, by reason (change, ping) and state.",
		}, []string{"reason", "state"}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedpipe_presence_instances_expired_total", Help: "Sync workers that went silent without clearing and were cleared by timeout.",
		}),
		sweeps: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "fedpipe_presence_sweep_duration_seconds", Help: "Time to run the due presence timers.", Buckets: prometheus.DefBuckets,
		}),
		sweepFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedpipe_presence_sweep_failures_total", Help: "Timer sweeps that failed and were retried.",
		}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "fedpipe_presence_batch_records", Help: "Usersync records applied per transaction.",
			Buckets: []float64{1, 2, 5, 10, 20, 50, 100, 200, 500},
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.records, m.told, m.expired, m.sweeps, m.sweepFailures, m.batch} {
			if err := reg.Register(c); err != nil {
				return m, fmt.Errorf("presence: registering metrics: %w", err)
			}
		}
	}
	return m, nil
}
