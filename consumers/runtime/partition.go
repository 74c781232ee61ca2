package runtime

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
)

// partition is one assigned partition for the length of a generation.
type partition struct {
	g      *Group
	gen    *kafka.Generation
	topic  string
	id     int
	offset int64
}

// run handles the partition until the generation ends, then drains the handler
// and commits the final watermark. A non-nil error is fatal to the member.
func (p *partition) run(ctx context.Context) error {
	g := p.g
	log := g.log.With("topic", p.topic, "partition", p.id)
	if ctx.Err() != nil {
		// kafka-go runs functions started on an already-ended generation without
		// waiting for them before the next one: such a partition may already
		// belong to another member, so it must not even be opened.
		return nil
	}
	h, err := p.open(ctx)
	if err != nil || h == nil {
		return nil // the generation ended while opening
	}
	start := p.offset
	if start < 0 {
		start = -1 // learnt from the first fetched record
	}
	wm := newWatermark(start)
	committed := start
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: g.cfg.Brokers, Topic: p.topic, Partition: p.id, MaxWait: g.cfg.MaxWait, MinBytes: 1, MaxBytes: 10 << 20})
	defer r.Close()
	if err := r.SetOffset(p.offset); err != nil {
		return fmt.Errorf("setting offset of %s/%d: %w", p.topic, p.id, err)
	}
	lag := g.m.lag.WithLabelValues(g.cfg.GroupID, p.topic, strconv.Itoa(p.id))
	var hwm int64 = -1
	commit := func() {
		w, _, _ := wm.value()
		if w <= committed || w < 0 {
			return
		}
		if err := p.gen.CommitOffsets(map[string]map[int]int64{p.topic: {p.id: w}}); err != nil {
			g.m.commitFailures.WithLabelValues(g.cfg.GroupID).Inc()
			log.Debug("commit failed (the generation is probably ending)", "offset", w, "err", err)
			return
		}
		committed = w
		if hwm >= 0 {
			lag.Set(float64(hwm - w))
		}
	}
	var fatal error
	lastCommit := time.Now()
	// Handle gets a context through which a Batch dead-letters kept records
	// that turn out to be poison (see Batch).
	hctx := context.WithValue(ctx, deadLetterKey{}, deadLetterFunc(func(dctx context.Context, m kafka.Message, reason error) error {
		g.m.poison.WithLabelValues(g.cfg.GroupID, p.topic).Inc()
		log.Warn("dead-lettering a record", "offset", m.Offset, "reason", reason)
		if err := p.deadLetter(dctx, m, reason); err != nil {
			return fmt.Errorf("writing dead letter for %s/%d@%d: %w", p.topic, p.id, m.Offset, err)
		}
		return nil
	}))
loop:
	for ctx.Err() == nil {
		if time.Since(lastCommit) >= g.cfg.CommitInterval {
			commit()
			lastCommit = time.Now()
		}
		if _, inFlight, tracked := wm.value(); inFlight >= g.cfg.MaxInFlight || tracked >= maxTrackedPerInFlight*g.cfg.MaxInFlight {
			select { // back-pressure: wait for handlers to finish some records
			case <-ctx.Done():
			case <-time.After(5 * time.Millisecond):
			}
			continue
		}
		fctx, cancel := context.WithTimeout(ctx, g.cfg.CommitInterval)
		m, err := r.FetchMessage(fctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				log.Warn("fetch failed; retrying", "err", err)
				time.Sleep(100 * time.Millisecond)
			}
			continue
		}
		hwm = m.HighWaterMark
		wm.add(m.Offset)
		offset := m.Offset
		done := func() { wm.markDone(offset) } // idempotent, safe from any goroutine
		for attempt := 0; ; attempt++ {
			err := h.Handle(hctx, m, done)
			if err == nil {
				g.m.handled.WithLabelValues(g.cfg.GroupID, p.topic).Inc()
				break
			}
			if IsPoison(err) {
				g.m.poison.WithLabelValues(g.cfg.GroupID, p.topic).Inc()
				log.Warn("dead-lettering a record", "offset", m.Offset, "reason", err)
				if derr := p.deadLetter(ctx, m, err); derr != nil {
					if ctx.Err() != nil {
						// The generation ended under the write: not a failure.
						// The record is not done, so its next owner redoes it.
						log.Info("dead letter cut by the end of the generation; the next owner redoes it", "offset", m.Offset)
						break loop
					}
					fatal = fmt.Errorf("writing dead letter for %s/%d@%d: %w", p.topic, p.id, m.Offset, derr)
					break loop
				}
				done()
				break
			}
			if ctx.Err() != nil {
				break loop
			}
			g.m.handleErrors.WithLabelValues(g.cfg.GroupID, p.topic).Inc()
			wait := min(time.Duration(1<<min(attempt, 8))*50*time.Millisecond, 10*time.Second)
			log.Warn("handling failed; retrying the record", "offset", m.Offset, "err", err, "in", wait)
			select {
			case <-ctx.Done():
				break loop
			case <-time.After(wait):
			}
		}
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.cfg.DrainTimeout)
	defer cancel()
	if err := h.Close(dctx); err != nil {
		log.Warn("draining the partition", "err", err)
	}
	commit()
	return fatal
}

// open opens the handler, retrying transient failures until the generation ends.
func (p *partition) open(ctx context.Context) (PartitionHandler, error) {
	for attempt := 0; ; attempt++ {
		h, err := p.g.stage.Open(ctx, p.topic, p.id)
		if err == nil {
			return h, nil
		}
		p.g.log.Warn("opening partition failed; retrying", "topic", p.topic, "partition", p.id, "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(min(time.Duration(attempt+1)*200*time.Millisecond, 5*time.Second)):
		}
	}
}

// deadLetter copies m to the dead-letter topic with why and where it came from.
func (p *partition) deadLetter(ctx context.Context, m kafka.Message, reason error) error {
	headers := append([]kafka.Header(nil), m.Headers...)
	headers = append(headers,
		kafka.Header{Key: "deadletter_reason", Value: []byte(reason.Error())},
		kafka.Header{Key: "source_topic", Value: []byte(m.Topic)},
		kafka.Header{Key: "source_partition", Value: []byte(strconv.Itoa(m.Partition))},
		kafka.Header{Key: "source_offset", Value: []byte(strconv.FormatInt(m.Offset, 10))},
		kafka.Header{Key: "deadletter_group", Value: []byte(p.g.cfg.GroupID)},
		kafka.Header{Key: "deadletter_instance", Value: []byte(p.g.cfg.Instance)},
	)
	return p.g.dead.WriteMessages(ctx, kafka.Message{Key: m.Key, Value: m.Value, Headers: headers})
}
