package relay

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
)

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
			r.m.failures.Inc()
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

// round publishes every stream up to the position below which everything is
// safely visible, the streams in their order (see Relay), and stores the
// positions reached in one statement. A stream with no rows in the round's
// span is not read (withRows): its position moves to the round's end with
// the others'. It reports whether there was anything to publish.
func (r *Relay) round(ctx context.Context) (bool, error) {
	if r.positions == nil {
		if err := r.loadPositions(ctx); err != nil {
			return false, err
		}
	}
	lowest := int64(math.MaxInt64)
	for _, s := range r.streams {
		lowest = min(lowest, r.positions[s.name()])
	}
	// Every stream takes its positions from one sequence, so one visibility
	// wait covers them all.
	upto, err := r.visibleUpTo(ctx, lowest)
	if err != nil || upto <= lowest {
		return false, err
	}
	busy, err := r.withRows(ctx, upto)
	if err != nil {
		return false, err
	}
	for i, s := range r.streams {
		if !busy[i] {
			// Nothing up to upto: the position moves on, stored with the others.
			if r.positions[s.name()] < upto {
				r.positions[s.name()] = upto
				s.position.Set(float64(upto))
			}
			continue
		}
		if err := r.publish(ctx, s, upto); err != nil {
			// What was acknowledged before the failure is kept (best
			// effort: the store may be what failed).
			return false, errors.Join(err, r.storePositions(ctx))
		}
	}
	return true, r.storePositions(ctx)
}

// withRows reports, for each stream in order, whether its table has rows
// after its position up to upto, all in one statement, so that a round reads
// only the streams that have something to publish (an idle stream's read
// would be a round trip, a query for PostgreSQL to plan and run, and a
// round's worth of latency added to the streams after it). The rows up to
// upto are all committed or rolled back (visibleUpTo) and no later writer
// takes a position at or below it, so a stream without rows now has none to
// publish in this round: a row can only leave the span (superseded in a
// table that keeps one row per key), never enter it. A relay with one stream
// reads it without asking.
func (r *Relay) withRows(ctx context.Context, upto int64) ([]bool, error) {
	busy := make([]bool, len(r.streams))
	if len(r.streams) == 1 {
		busy[0] = r.positions[r.streams[0].name()] < upto
		return busy, nil
	}
	args := make([]any, 0, len(r.streams)+1)
	dest := make([]any, len(r.streams))
	for i, s := range r.streams {
		args = append(args, r.positions[s.name()])
		dest[i] = &busy[i]
	}
	args = append(args, upto)
	if err := r.pool.QueryRow(ctx, r.rowsQuery, args...).Scan(dest...); err != nil {
		return nil, fmt.Errorf("asking which streams have rows up to %d: %w", upto, err)
	}
	return busy, nil
}

// rowsQuery is withRows' statement for streams: one EXISTS per stream, $i its
// position and the last parameter the round's end.
func rowsQuery(streams []metered) string {
	var b strings.Builder
	b.WriteString("SELECT ")
	for i, s := range streams {
		table, position := s.source()
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "EXISTS (SELECT FROM %s WHERE %s > $%d AND %s <= $%d)", table, position, i+1, position, len(streams)+1)
	}
	return b.String()
}

// publish publishes s's rows after its position up to upto, a batch at a
// time, moving its position in memory after each acknowledged batch. A
// failed batch is published again whole. The positions are stored after
// every batch that leaves more to publish (a long backlog), else at the end
// of the round: a relay that dies republishes at most a round's batch per
// stream.
func (r *Relay) publish(ctx context.Context, s metered, upto int64) error {
	pos := r.positions[s.name()]
	for pos < upto {
		start := time.Now()
		b, err := s.read(ctx, r.pool, span{after: pos, upto: upto, limit: r.cfg.BatchSize, maxBytes: r.cfg.MaxRoundBytes, maxRecords: r.cfg.MaxRoundRecords, instance: r.cfg.Instance})
		if err != nil {
			return err
		}
		if b.end <= pos || b.end > upto {
			return fmt.Errorf("stream %s read after %d up to %d, reaching %d", s.name(), pos, upto, b.end)
		}
		for _, w := range b.writes {
			if err := r.write(ctx, w, s.deadLettered); err != nil {
				return fmt.Errorf("publishing %d %s records: %w", len(w.msgs), w.topic, err)
			}
		}
		pos = b.end
		r.positions[s.name()] = pos
		s.records.Add(float64(b.published))
		s.position.Set(float64(pos))
		s.duration.Observe(time.Since(start).Seconds())
		if pos < upto {
			if err := r.storePositions(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// write publishes w's records; records refused for good are dead-lettered
// (WithDeadLetters) and the others published (kafkaio.WriteAll).
func (r *Relay) write(ctx context.Context, w write, deadLettered prometheus.Counter) error {
	if len(w.msgs) == 0 {
		return nil
	}
	target := w.topic
	switch tw := w.w.(type) {
	case interface{ Topic() string }: // a *kafkaio.PartitionWriter
		target = tw.Topic()
	case *kafka.Writer:
		target = tw.Topic
	}
	var dl *kafkaio.DeadLetters
	if r.dead != nil {
		dl = &kafkaio.DeadLetters{W: r.dead, Target: target, Writer: "relay", Instance: r.cfg.Instance, Counter: deadLettered}
	}
	n, err := kafkaio.WriteAll(ctx, w.w, w.msgs, dl)
	if n > 0 {
		r.log.Warn("records could never be published; dead-lettered", "records", n, "of", len(w.msgs), "topic", target)
	}
	return err
}

// loadPositions reads every stream's stored position (0 for one never
// stored). The relay then keeps them in memory: it is the only writer.
func (r *Relay) loadPositions(ctx context.Context) error {
	names := make([]string, len(r.streams))
	for i, s := range r.streams {
		names[i] = s.name()
	}
	rows, err := r.pool.Query(ctx, "SELECT stream, position FROM relay_positions WHERE stream = ANY($1)", names)
	if err != nil {
		return fmt.Errorf("reading relay positions: %w", err)
	}
	stored := map[string]int64{}
	var name string
	var pos int64
	if _, err := pgx.ForEachRow(rows, []any{&name, &pos}, func() error { stored[name] = pos; return nil }); err != nil {
		return fmt.Errorf("reading relay positions: %w", err)
	}
	r.positions, r.stored = map[string]int64{}, stored
	for _, s := range r.streams {
		r.positions[s.name()] = stored[s.name()]
		s.position.Set(float64(stored[s.name()]))
	}
	return nil
}

// storePositions stores, in one statement, the positions that moved since
// they were last stored.
func (r *Relay) storePositions(ctx context.Context) error {
	var names []string
	var positions []int64
	for _, s := range r.streams {
		if pos, ok := r.positions[s.name()]; ok && pos != r.stored[s.name()] {
			names, positions = append(names, s.name()), append(positions, pos)
		}
	}
	if len(names) == 0 {
		return nil
	}
	if _, err := r.pool.Exec(ctx, `INSERT INTO relay_positions (stream, position) SELECT * FROM unnest($1::text[], $2::bigint[])
		ON CONFLICT (stream) DO UPDATE SET position = EXCLUDED.position`, names, positions); err != nil {
		return fmt.Errorf("storing relay positions %v of %v: %w", positions, names, err)
	}
	for i, name := range names {
		r.stored[name] = positions[i]
	}
	return nil
}
