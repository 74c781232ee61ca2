package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// partition is one assigned partition for the length of a generation.
type partition struct {
	g       *Group
	commits *committer // the generation's
	topic   string
	id      int
	offset  int64

	// Set by run.
	log       *slog.Logger
	wm        *watermark
	committed int64 // the last offset committed (or the start)
	hwm       int64 // the partition's high-water mark at the last fetch; -1 before
	lag       prometheus.Gauge
	age       prometheus.Observer
}

// run handles the partition until the generation ends, then drains the handler
// and commits the final watermark. A non-nil error is fatal to the member.
func (p *partition) run(ctx context.Context) error {
	if ctx.Err() != nil {
		// kafka-go runs functions started on an already-ended generation without
		// waiting for them before the next one: such a partition may already
		// belong to another member, so it must not even be opened.
		return nil
	}
	g := p.g
	p.log = g.log.With("topic", p.topic, "partition", p.id)
	h, err := p.open(ctx)
	if err != nil || h == nil {
		return nil // the generation ended while opening
	}
	p.committed = max(p.offset, -1) // below 0: learnt from the first fetched record
	p.wm = newWatermark(p.committed, g.cfg.MaxInFlight)
	p.hwm = -1
	p.lag = g.m.lag.WithLabelValues(p.topic, strconv.Itoa(p.id))
	p.age = g.m.age.WithLabelValues(p.topic)
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: g.cfg.Brokers, Topic: p.topic, Partition: p.id, MaxWait: g.cfg.MaxWait, MinBytes: 1, MaxBytes: 10 << 20})
	defer r.Close()
	var fatal error
	if err := r.SetOffset(p.offset); err != nil {
		fatal = fmt.Errorf("setting offset of %s/%d: %w", p.topic, p.id, err)
	} else {
		fatal = p.consume(ctx, r, p.handler(h))
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.cfg.DrainTimeout)
	defer cancel()
	if err := h.Close(dctx); err != nil {
		p.log.Warn("draining the partition", "err", err)
	}
	p.commit()
	return fatal
}

// handler wraps h in the layers every record goes through, innermost first:
// outcome metrics, retry of transient failures, dead letters for poison.
func (p *partition) handler(h PartitionHandler) handleFunc {
	m := p.g.m
	return chain(h.Handle,
		counting(m.handled.MustCurryWith(prometheus.Labels{"topic": p.topic}), m.handleErrors.MustCurryWith(prometheus.Labels{"topic": p.topic})),
		retrying(p.log),
		deadLettering(p.deadLetter, p.log),
	)
}

// consume fetches records and hands each to handle until the generation ends
// (nil) or handle returns an error while it lasts (fatal: a record that must
// not be skipped cannot be dead-lettered). The watermark advances as records
// are done, and is committed every CommitInterval.
func (p *partition) consume(ctx context.Context, r *kafka.Reader, handle handleFunc) error {
	interval := p.g.cfg.CommitInterval
	nextCommit := time.Now().Add(interval)
	for ctx.Err() == nil {
		if !time.Now().Before(nextCommit) {
			p.commit()
			nextCommit = time.Now().Add(interval)
		}
		if p.wm.full() { // back-pressure: wait for handlers to finish some records
			p.waitForSpace(ctx, time.Until(nextCommit))
			continue
		}
		m, ok := p.fetch(ctx, r)
		if !ok {
			continue
		}
		p.hwm = m.HighWaterMark
		if !m.Time.IsZero() {
			p.age.Observe(time.Since(m.Time).Seconds())
		}
		p.wm.add(m.Offset)
		offset := m.Offset
		done := func() { p.wm.markDone(offset) } // idempotent, safe from any goroutine
		if err := handle(ctx, m, done); err != nil {
			if ctx.Err() != nil {
				return nil // the generation ended: the record's next owner redoes it
			}
			return err
		}
	}
	return nil
}

// waitForSpace waits until a record is done, the generation ends, or the
// next commit is due.
func (p *partition) waitForSpace(ctx context.Context, commitIn time.Duration) {
	if commitIn <= 0 {
		return
	}
	t := time.NewTimer(commitIn)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-p.wm.freed():
	case <-t.C:
	}
}

// fetch returns the next record, or false when none came within a commit
// interval (so that the caller commits) or the fetch failed.
func (p *partition) fetch(ctx context.Context, r *kafka.Reader) (kafka.Message, bool) {
	fctx, cancel := context.WithTimeout(ctx, p.g.cfg.CommitInterval)
	m, err := r.FetchMessage(fctx)
	cancel()
	if err == nil {
		return m, true
	}
	if ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) {
		p.log.Warn("fetch failed; retrying", "err", err)
		t := time.NewTimer(100 * time.Millisecond)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
	return kafka.Message{}, false
}

// commit commits the watermark if it moved, and updates the lag gauge.
func (p *partition) commit() {
	w := p.wm.value()
	if w <= p.committed || w < 0 {
		return
	}
	if err := p.commits.commit(p.topic, p.id, w); err != nil {
		p.g.m.commitFailures.WithLabelValues().Inc()
		p.log.Debug("commit failed (the generation is probably ending)", "offset", w, "err", err)
		return
	}
	p.committed = w
	if p.hwm >= 0 {
		p.lag.Set(float64(p.hwm - w))
	}
}

// deadLetter counts, logs and writes a dead letter for m, a record of this
// partition that can never be handled (the partition's deadLetterFunc).
func (p *partition) deadLetter(ctx context.Context, m kafka.Message, reason error) error {
	p.g.m.poison.WithLabelValues(p.topic).Inc()
	p.log.Warn("dead-lettering a record", "offset", m.Offset, "reason", reason)
	return p.g.dead.Write(ctx, m, reason)
}

// open opens the handler, retrying transient failures until the generation ends.
func (p *partition) open(ctx context.Context) (PartitionHandler, error) {
	for attempt := 0; ; attempt++ {
		h, err := p.g.stage.Open(ctx, p.topic, p.id)
		if err == nil {
			return h, nil
		}
		p.log.Warn("opening partition failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(min(time.Duration(attempt+1)*200*time.Millisecond, 5*time.Second)):
		}
	}
}
