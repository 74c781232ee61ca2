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
	fedpresence "github.com/fedpipe/fedpipe/federation/presence"
	"github.com/fedpipe/fedpipe/schema"
)

// Config configures the stage.
type Config struct {
	// ServerName is ours: records about users of other servers are refused.
	// Required.
	ServerName string
	// Prefix is the topic prefix. Required.
	Prefix string
	// Timers are the presence timers. Default (all zero)
	// fedpresence.DefaultTimers.
	Timers fedpresence.Timers
	// InstanceTimeout: an instance that sends nothing for this long has
	// vanished, and its users stop syncing there. Default
	// DefaultInstanceTimeout (Synapse's 5 minutes). Sync workers send
	// instance_alive well within it.
	InstanceTimeout time.Duration
	// SweepInterval is how often the timers are checked. Default
	// DefaultSweepInterval.
	SweepInterval time.Duration
	// SweepBatch is the most users one timer transaction handles. Default 500.
	SweepBatch int
	// Now is the clock; tests inject their own. Default time.Now.
	Now func() time.Time
}

const (
	// DefaultInstanceTimeout is Config.InstanceTimeout when it is zero (Synapse's).
	DefaultInstanceTimeout = 5 * time.Minute
	// DefaultSweepInterval is Config.SweepInterval when it is zero.
	DefaultSweepInterval = time.Second
)

// Validate fills the defaults of zero fields and reports every invalid
// field, each by name.
func (c *Config) Validate() error {
	if c.Timers == (fedpresence.Timers{}) {
		c.Timers = fedpresence.DefaultTimers
	}
	if c.InstanceTimeout == 0 {
		c.InstanceTimeout = DefaultInstanceTimeout
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = DefaultSweepInterval
	}
	if c.SweepBatch == 0 {
		c.SweepBatch = 500
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("presence: "+format, args...)) }
	if c.ServerName == "" {
		bad("ServerName must be set")
	}
	if c.Prefix == "" {
		bad("Prefix must be set")
	}
	if err := c.Timers.Validate(); err != nil {
		bad("Timers: %w", err)
	}
	if c.InstanceTimeout <= 0 {
		bad("InstanceTimeout must be positive, got %s", c.InstanceTimeout)
	}
	if c.SweepInterval <= 0 {
		bad("SweepInterval must be positive, got %s", c.SweepInterval)
	}
	if c.SweepBatch <= 0 {
		bad("SweepBatch must be positive, got %d", c.SweepBatch)
	}
	return errors.Join(errs...)
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
	register, touch, users := instancesAndUsers(recs)
	if err := recordInstances(ctx, tx, register, touch, now); err != nil {
		return err
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
	b := &pgx.Batch{}
	told, err := s.applyRecords(b, recs, states, where, now)
	if err != nil {
		return err
	}
	// The syncs and every user's final state, in one round trip.
	for _, u := range users {
		st := states[u]
		queueSave(b, st, s.cfg.Timers.NextCheck(st, len(where[u]) > 0), told[u])
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("storing the presence of %d users: %w", len(users), err)
	}
	return nil
}

// instancesAndUsers sorts the instances of recs into those whose silence from
// now on means they vanished (register: syncs and keep-alives) and those only
// shown to be alive (touch: a presence PUT through the ingest API names no
// sync worker), and lists the users recs name, in order.
func instancesAndUsers(recs []schema.UserSyncRecord) (register, touch map[string]bool, users []string) {
	register, touch = map[string]bool{}, map[string]bool{}
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
	return register, touch, users
}

// applyRecords applies recs in order to the locked users' states and to
// where they sync, queueing the sync changes on b. It returns the users
// remote servers should be told of.
func (s *Stage) applyRecords(b *pgx.Batch, recs []schema.UserSyncRecord, states map[string]fedpresence.State, where map[string]map[string]bool, now int64) (map[string]bool, error) {
	told := map[string]bool{}
	for _, r := range recs {
		if r.UserID == "" {
			continue
		}
		in := inputOf(r)
		if r.Kind == schema.KindUserSync {
			if where[r.UserID] == nil {
				where[r.UserID] = map[string]bool{}
			}
			if in.Syncing {
				where[r.UserID][r.Instance] = true
			} else {
				delete(where[r.UserID], r.Instance)
			}
			queueSync(b, r.Instance, r.UserID, in.Syncing)
		}
		prev, ok := states[r.UserID]
		if !ok {
			return nil, fmt.Errorf("presence of %s: %w", r.UserID, errNoRow)
		}
		next, reason := s.cfg.Timers.Step(prev, fedpresence.Apply(prev, in, now), len(where[r.UserID]) > 0, now)
		states[r.UserID] = next
		if reason != fedpresence.ReasonNone {
			told[r.UserID] = true
			s.m.told.WithLabelValues(string(reason), next.Presence).Inc()
		}
	}
	return told, nil
}

// inputOf is what a record with a user says happened to the user.
func inputOf(r schema.UserSyncRecord) fedpresence.Input {
	switch r.Kind {
	case schema.KindUserSync:
		return fedpresence.Input{Kind: fedpresence.InputSync, Syncing: *r.Syncing}
	case schema.KindUserActive:
		return fedpresence.Input{Kind: fedpresence.InputActive}
	case schema.KindSetPresence:
		return fedpresence.Input{Kind: fedpresence.InputSet, Presence: r.Presence, StatusMsg: r.StatusMsg}
	}
	return fedpresence.Input{}
}

// update applies in (the zero Input for a timer) to a locked user and stores
// the result.
func (s *Stage) update(ctx context.Context, tx pgx.Tx, states map[string]fedpresence.State, syncing map[string]bool, userID string, in fedpresence.Input, now int64) error {
	prev, ok := states[userID]
	if !ok {
		return fmt.Errorf("presence of %s: %w", userID, errNoRow)
	}
	next := fedpresence.Apply(prev, in, now)
	next, reason := s.cfg.Timers.Step(prev, next, syncing[userID], now)
	if err := save(ctx, tx, next, s.cfg.Timers.NextCheck(next, syncing[userID]), reason != fedpresence.ReasonNone); err != nil {
		return err
	}
	if reason != fedpresence.ReasonNone {
		s.m.told.WithLabelValues(string(reason), next.Presence).Inc()
	}
	return nil
}

// clear ends every sync of an instance: each of its users who syncs nowhere
// else goes offline at once. It returns how many users it had.
func (s *Stage) clear(ctx context.Context, tx pgx.Tx, instance string, now int64) (int, error) {
	users, err := clearInstance(ctx, tx, instance)
	if err != nil || len(users) == 0 {
		return 0, err
	}
	states, syncing, err := lockUsers(ctx, tx, users)
	if err != nil {
		return 0, err
	}
	for _, u := range users {
		in := fedpresence.Input{Kind: fedpresence.InputCleared}
		if syncing[u] {
			in = fedpresence.Input{Kind: fedpresence.InputSync, Syncing: false} // still syncing elsewhere: only the sync time moves
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
			var err error
			if instance, err = lockSilentInstance(ctx, tx, now-s.cfg.InstanceTimeout.Milliseconds()); err != nil {
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
		states, err := lockDue(ctx, tx, now, s.cfg.SweepBatch)
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
			if err := s.update(ctx, tx, states, syncing, u, fedpresence.Input{}, now); err != nil {
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
