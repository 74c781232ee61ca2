package relay

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

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
// safely visible, the streams in their order (see Relay). It reports whether
// there was anything to publish.
func (r *Relay) round(ctx context.Context) (bool, error) {
	from := make([]int64, len(r.streams))
	lowest := int64(math.MaxInt64)
	for i, s := range r.streams {
		pos, err := r.loadPosition(ctx, s.name())
		if err != nil {
			return false, err
		}
		from[i], lowest = pos, min(lowest, pos)
	}
	// Every stream takes its positions from one sequence, so one visibility
	// wait covers them all.
	upto, err := r.visibleUpTo(ctx, lowest)
	if err != nil || upto <= lowest {
		return false, err
	}
	for i, s := range r.streams {
		if err := r.publish(ctx, s, from[i], upto); err != nil {
			return false, err
		}
	}
	return true, nil
}

// publish publishes s's rows after pos up to upto, a batch at a time, storing
// the position after each acknowledged batch. A failed batch is published
// again whole.
func (r *Relay) publish(ctx context.Context, s metered, pos, upto int64) error {
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
		if err := r.storePosition(ctx, s.name(), b.end); err != nil {
			return err
		}
		pos = b.end
		s.records.Add(float64(b.published))
		s.position.Set(float64(pos))
		s.duration.Observe(time.Since(start).Seconds())
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
	case interface{ Topic() string }: // a *kafkaio.RelayWriter
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

func (r *Relay) loadPosition(ctx context.Context, stream string) (int64, error) {
	var pos int64
	err := r.pool.QueryRow(ctx, "SELECT COALESCE((SELECT position FROM relay_positions WHERE stream = $1), 0)", stream).Scan(&pos)
	if err != nil {
		return 0, fmt.Errorf("reading relay position of %s: %w", stream, err)
	}
	return pos, nil
}

func (r *Relay) storePosition(ctx context.Context, stream string, pos int64) error {
	if _, err := r.pool.Exec(ctx, `INSERT INTO relay_positions (stream, position) VALUES ($1, $2)
		ON CONFLICT (stream) DO UPDATE SET position = EXCLUDED.position`, stream, pos); err != nil {
		return fmt.Errorf("storing relay position %d of %s: %w", pos, stream, err)
	}
	return nil
}
