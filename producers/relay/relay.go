// Package relay publishes the stream tables (events and
// current_state_delta_stream, which a homeserver writes, and presence_stream,
// which the presence stage writes) to Kafka in stream order, never skipping a row
// whose transaction commits after a later one, and records how far it got only
// after the broker acknowledged.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
)

// relay_positions rows of the streams.
const (
	streamName     = "events"
	presenceStream = "presence"
)

// Writer is what the relay publishes with: a *kafka.Writer configured with
// RequiredAcks: RequireAll, Murmur2Balancer and its topic.
type Writer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// Config configures a Relay.
type Config struct {
	// Instance names this process in record headers.
	Instance string
	// PollInterval is the pause between rounds when there is nothing new.
	PollInterval time.Duration
	// BatchSize is the most events read and published per round trip.
	BatchSize int
	// MaxRoundBytes bounds the records of one round, so that the records of a
	// round for one partition fit one record batch (the room writer must allow
	// batches of that size and of BatchSize×(1+deltas) records: see
	// kafkaio.NewRelayWriter).
	MaxRoundBytes int
	// RetryDelay is the first pause after a failed round (doubling to a minute).
	RetryDelay time.Duration
}

// Validate reports invalid settings.
func (c *Config) Validate() error {
	if c.PollInterval == 0 {
		c.PollInterval = 50 * time.Millisecond
	}
	if c.BatchSize == 0 {
		c.BatchSize = 1000
	}
	if c.MaxRoundBytes == 0 {
		c.MaxRoundBytes = 900 << 10 // below Kafka's default 1 MiB message.max.bytes
	}
	if c.RetryDelay == 0 {
		c.RetryDelay = 100 * time.Millisecond
	}
	if c.Instance == "" {
		return errors.New("relay: instance must be set")
	}
	if c.PollInterval < 0 || c.BatchSize < 0 {
		return errors.New("relay: poll interval and batch size must be positive")
	}
	return nil
}

// Relay publishes stream rows to Kafka.
type Relay struct {
	cfg        Config
	pool       *pgxpool.Pool
	room       Writer
	state      Writer
	log        *slog.Logger
	published  prometheus.Counter
	position   prometheus.Gauge
	rounds     prometheus.Histogram
	failures   prometheus.Counter
	waitingXID prometheus.Histogram
	xidChecks  prometheus.Counter

	presence          Writer
	presencePublished prometheus.Counter
	presencePosition  prometheus.Gauge

	dead         Writer
	deadLettered prometheus.Counter
}

// Option adds to what a Relay publishes.
type Option func(*Relay)

// WithPresence makes the relay publish presence_stream to <prefix>.presence
// through w (keyed by user_id), in the same rounds as the events.
func WithPresence(w Writer) Option {
	return func(r *Relay) { r.presence = w }
}

// WithDeadLetters sends rows whose records can never be published (larger
// than the topic takes, or refused by a broker as invalid) to the dead-letter
// topic through w, counted by fedpipe_relay_records_deadlettered_total, and
// the relay moves on. Without it such a row stops Run with an error: retried,
// it would hold back every later row.
func WithDeadLetters(w Writer) Option {
	return func(r *Relay) { r.dead = w }
}

// New returns a Relay writing room records with room and state records with state.
func New(cfg Config, pool *pgxpool.Pool, room, state Writer, logger *slog.Logger, reg prometheus.Registerer, opts ...Option) (*Relay, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Relay{cfg: cfg, pool: pool, room: room, state: state, log: logger,
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedpipe_relay_records_published_total", Help: "Records the relay published (events and state deltas, room topic)."}),
		position:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "fedpipe_relay_position", Help: "Stream position the relay has published up to."}),
		rounds:    prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fedpipe_relay_publish_duration_seconds", Help: "Time to read and publish one batch.", Buckets: prometheus.DefBuckets}),
		failures:  prometheus.NewCounter(prometheus.CounterOpts{Name: "fedpipe_relay_failures_total", Help: "Rounds that failed and were retried."}),
		waitingXID: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fedpipe_relay_visibility_wait_seconds",
			Help: "Time spent waiting for in-progress transactions before publishing up to a position.", Buckets: prometheus.DefBuckets}),
		deadLettered: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedpipe_relay_records_deadlettered_total",
			Help: "Records the relay could never publish (too large, or refused by a broker) and sent to the dead-letter topic."}),
	}
	for _, o := range opts {
		o(r)
	}
	r.xidChecks = prometheus.NewCounter(prometheus.CounterOpts{Name: "fedpipe_relay_visibility_checks_total",
		Help: "Queries asking whether the transactions holding unpublished positions have ended."})
	cs := []prometheus.Collector{r.published, r.position, r.rounds, r.failures, r.waitingXID, r.xidChecks, r.deadLettered}
	if r.presence != nil {
		r.presencePublished = prometheus.NewCounter(prometheus.CounterOpts{Name: "fedpipe_relay_presence_published_total", Help: "Presence records the relay published."})
		r.presencePosition = prometheus.NewGauge(prometheus.GaugeOpts{Name: "fedpipe_relay_presence_position", Help: "Stream position the relay has published presence up to."})
		cs = append(cs, r.presencePublished, r.presencePosition)
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("relay metrics: %w", err)
		}
	}
	return r, nil
}

// Run publishes until ctx ends. Database and broker failures are retried with
// backoff (nothing is skipped); only cancellation ends it, or a record that can
// never be published when there is no dead-letter topic (WithDeadLetters).
func (r *Relay) Run(ctx context.Context) error {
	delay := r.cfg.RetryDelay
	for {
		progressed, err := r.round(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, kafkaio.ErrNoDeadLetters) {
			return fmt.Errorf("relay: %w", err)
		}
		wait := r.cfg.PollInterval
		switch {
		case err != nil:
			r.failures.Inc()
			r.log.Warn("relay round failed; retrying", "err", err, "in", delay)
			wait, delay = delay, min(delay*2, time.Minute)
		case progressed:
			delay = r.cfg.RetryDelay
			continue
		default:
			delay = r.cfg.RetryDelay
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// write publishes msgs with w; records refused for good are dead-lettered
// (WithDeadLetters) and the others published (kafkaio.WriteAll).
func (r *Relay) write(ctx context.Context, w Writer, stream string, msgs []kafka.Message) error {
	target := stream
	if kw, ok := w.(*kafka.Writer); ok {
		target = kw.Topic
	}
	var dl *kafkaio.DeadLetters
	if r.dead != nil {
		dl = &kafkaio.DeadLetters{W: r.dead, Target: target, Writer: "relay", Instance: r.cfg.Instance, Counter: r.deadLettered}
	}
	n, err := kafkaio.WriteAll(ctx, w, msgs, dl)
	if n > 0 {
		r.log.Warn("records could never be published; dead-lettered", "records", n, "of", len(msgs), "topic", target)
	}
	return err
}

// round publishes everything that is safely visible. It reports whether it
// published anything.
func (r *Relay) round(ctx context.Context) (bool, error) {
	pos, err := r.loadPosition(ctx, streamName)
	if err != nil {
		return false, err
	}
	ppos := pos
	if r.presence != nil {
		if ppos, err = r.loadPosition(ctx, presenceStream); err != nil {
			return false, err
		}
	}
	// Both streams take their positions from one sequence, so one visibility
	// wait covers both.
	upto, err := r.visibleUpTo(ctx, min(pos, ppos))
	if err != nil || upto <= min(pos, ppos) {
		return false, err
	}
	// Room records first: presence at a position is routed against the
	// membership of every room record below it, and the router finds those
	// on the room topic once it has fetched the presence (router.roomBarrier).
	for pos < upto {
		start := time.Now()
		next, n, err := r.publish(ctx, pos, upto)
		if err != nil {
			return false, err
		}
		pos = next
		r.published.Add(float64(n))
		r.position.Set(float64(pos))
		r.rounds.Observe(time.Since(start).Seconds())
	}
	if r.presence != nil && ppos < upto {
		if err := r.publishPresence(ctx, ppos, upto); err != nil {
			return false, err
		}
	}
	return true, nil
}

func (r *Relay) loadPosition(ctx context.Context, stream string) (int64, error) {
	var pos int64
	err := r.pool.QueryRow(ctx, "SELECT COALESCE((SELECT position FROM relay_positions WHERE stream = $1), 0)", stream).Scan(&pos)
	if err != nil {
		return 0, fmt.Errorf("reading relay position of %s: %w", stream, err)
	}
	return pos, nil
}

// visibleUpTo returns a position L such that every row at or below L is
// committed or rolled back. Writers take their xid before their position
// (fedpipe_next_stream_ordering), so every transaction that may own a position
// ≤ L had an xid before L was read. The relay then takes an xid of its own, N,
// with a snapshot: the transactions still running are among the snapshot's
// in-progress list and the xids from its xmax up to N (PostgreSQL does not list
// running xids at or above xmax). It waits until all of those are visible to a new snapshot
// (committed or rolled back, and no longer running for anyone).
// Taking an xid costs one per round, and only when there is something new.
func (r *Relay) visibleUpTo(ctx context.Context, published int64) (int64, error) {
	var last int64
	var called bool
	if err := r.pool.QueryRow(ctx, "SELECT last_value, is_called FROM events_stream_seq").Scan(&last, &called); err != nil {
		return 0, fmt.Errorf("reading the stream sequence: %w", err)
	}
	if !called || last <= published {
		return published, nil
	}
	var own, snap string
	if err := r.pool.QueryRow(ctx, "SELECT pg_current_xact_id()::text, pg_current_snapshot()::text").Scan(&own, &snap); err != nil {
		return 0, fmt.Errorf("reading a snapshot: %w", err)
	}
	xip, xmax, err := inProgress(snap)
	if err != nil {
		return 0, err
	}
	next, err := strconv.ParseUint(own, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("unexpected xid %q", own)
	}
	start := time.Now()
	defer func() { r.waitingXID.Observe(time.Since(start).Seconds()) }()
	// Most transactions end within milliseconds; a long one (a bulk import, a
	// migration) may hold its position for minutes: check quickly at first, then
	// back off to the poll interval rather than query PostgreSQL 500 times a second.
	pause := 2 * time.Millisecond
	for {
		r.xidChecks.Inc()
		var running bool
		// Visible in a fresh snapshot, not merely committed: a transaction is
		// marked committed in the commit log slightly before new snapshots stop
		// seeing it as running, and the rows must be visible to the next query.
		err := r.pool.QueryRow(ctx, `SELECT NOT COALESCE(bool_and(pg_visible_in_snapshot(x, pg_current_snapshot())), true) FROM (
				SELECT unnest($1::text[])::xid8 AS x
				UNION ALL SELECT g::text::xid8 FROM generate_series($2::bigint, $3::bigint) AS g) AS candidates`,
			xip, int64(xmax), int64(next)-1).Scan(&running)
		if err != nil {
			return 0, fmt.Errorf("checking in-progress transactions: %w", err)
		}
		if !running {
			return last, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(pause):
		}
		pause = min(pause*2, max(r.cfg.PollInterval, 2*time.Millisecond))
	}
}

// inProgress parses a pg_snapshot's text form "xmin:xmax:xip,…" into its
// in-progress list and xmax.
func inProgress(snap string) ([]string, uint64, error) {
	parts := strings.Split(snap, ":")
	if len(parts) != 3 {
		return nil, 0, fmt.Errorf("unexpected snapshot %q", snap)
	}
	xmax, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return nil, 0, fmt.Errorf("unexpected snapshot %q", snap)
	}
	if parts[2] == "" {
		return []string{}, xmax, nil
	}
	xs := strings.Split(parts[2], ",")
	for _, x := range xs {
		if _, err := strconv.ParseUint(x, 10, 64); err != nil {
			return nil, 0, fmt.Errorf("unexpected snapshot %q", snap)
		}
	}
	return xs, xmax, nil
}
