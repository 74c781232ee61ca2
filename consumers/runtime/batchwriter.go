package runtime

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
)

// Writer is what a BatchWriter writes with (a *kafka.Writer).
type Writer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// BatchWriter collects the records stages produce and writes them in large
// batches from one loop, calling each caller's done once its records are acked.
// Order of Write calls is kept. Failed writes are retried, never dropped,
// except records that can never be written (kafkaio.Refused: too large for
// the writer or the topic, or refused by a broker as invalid): those go to the
// dead-letter topic (WithDeadLetters), are counted, and count as written. With
// no dead-letter topic, such a record stops Run with an error rather than
// wedging every later write behind it.
type BatchWriter struct {
	w        Writer
	maxBatch int
	linger   time.Duration
	log      *slog.Logger
	dead     *kafkaio.DeadLetters

	mu      sync.Mutex
	queue   []pendingWrite
	queued  int
	taken   uint64        // batches taken from the queue
	settled uint64        // of those, written or given up
	settle  chan struct{} // closed and replaced whenever settled moves
	wake    chan struct{}
	space   chan struct{} // closed and replaced whenever queued shrinks
	written prometheus.Counter
	batches prometheus.Histogram
	refused prometheus.Counter
}

// BatchWriterOption configures a BatchWriter.
type BatchWriterOption func(*BatchWriter)

// WithDeadLetters sends records that can never be written to the dead-letter
// topic through dead, with the header source_topic set to target (the topic
// they were for), deadletter_writer to writer and deadletter_instance to
// instance (see kafkaio.DeadLetters).
func WithDeadLetters(dead Writer, target, writer, instance string) BatchWriterOption {
	return func(b *BatchWriter) {
		b.dead = &kafkaio.DeadLetters{W: dead, Target: target, Writer: writer, Instance: instance}
	}
}

type pendingWrite struct {
	ctx  context.Context // the writer's: once it ends the records are not written
	msgs []kafka.Message
	done func()
}

// NewBatchWriter returns a BatchWriter writing at most maxBatch records per
// request, waiting up to linger for more.
func NewBatchWriter(w Writer, maxBatch int, linger time.Duration, logger *slog.Logger, reg Registerer, opts ...BatchWriterOption) *BatchWriter {
	b := &BatchWriter{w: w, maxBatch: max(maxBatch, 1), linger: linger, log: logger, wake: make(chan struct{}, 1), space: make(chan struct{}),
		settle:  make(chan struct{}),
		written: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedpipe_batchwriter_records_written_total", Help: "Records written by batch writers."}),
		batches: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fedpipe_batchwriter_batch_records", Help: "Records per batch write.", Buckets: prometheus.ExponentialBuckets(1, 4, 8)}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedpipe_batchwriter_records_deadlettered_total",
			Help: "Records batch writers could never write (too large, or refused by a broker) and sent to the dead-letter topic."}),
	}
	for _, o := range opts {
		o(b)
	}
	// Shared by the batch writers of a process; one that cannot be
	// registered still counts, unseen.
	b.written, _ = register(reg, b.written)
	b.batches, _ = register(reg, b.batches)
	b.refused, _ = register(reg, b.refused)
	if b.dead != nil {
		b.dead.Counter = b.refused
	}
	return b
}

// Write queues msgs; done is called once they are all acknowledged. It blocks
// while the queue holds more than ten batches (back-pressure), until ctx ends.
// Records still queued when ctx ends are dropped, never written, and done is
// not called: a partition's handler passes its generation's context, so once
// the partition is revoked its records are redone by the next owner instead of
// landing after that owner's newer ones (see Settle).
func (b *BatchWriter) Write(ctx context.Context, msgs []kafka.Message, done func()) error {
	for {
		b.mu.Lock()
		if b.queued < 10*b.maxBatch || len(msgs) == 0 {
			b.queue = append(b.queue, pendingWrite{ctx: ctx, msgs: msgs, done: done})
			b.queued += len(msgs)
			b.mu.Unlock()
			select {
			case b.wake <- struct{}{}:
			default:
			}
			return nil
		}
		space := b.space
		b.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-space:
		}
	}
}

// Run writes queued records until ctx ends. Records not yet acked then stay
// undone, so their source records are not committed and will be redelivered.
// It returns an error only for a record that can never be written when there
// is no dead-letter topic, or whose dead letter cannot be written.
func (b *BatchWriter) Run(ctx context.Context) error {
	defer b.settleAll() // nothing is in flight once Run has returned
	delay := 50 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-b.wake:
		}
		if b.linger > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(b.linger):
			}
		}
		for {
			batch, msgs := b.take()
			if len(batch) == 0 {
				break
			}
			for {
				dead, err := kafkaio.WriteAll(ctx, b.w, msgs, b.dead)
				if dead > 0 {
					b.log.Warn("records could never be written; dead-lettered", "records", dead, "of", len(msgs), "topic", b.target())
				}
				if err == nil {
					break
				}
				if ctx.Err() != nil {
					return nil
				}
				if kafkaio.Refused(err) {
					// Refused with nowhere to put it, or the dead letter failed:
					// retrying would stop every later write behind this record.
					return fmt.Errorf("batch writer for %s: %w", b.target(), err)
				}
				b.log.Warn("batch write failed; retrying", "records", len(msgs), "err", err, "in", delay)
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(delay):
				}
				delay = min(delay*2, 5*time.Second)
			}
			delay = 50 * time.Millisecond
			b.written.Add(float64(len(msgs)))
			b.batches.Observe(float64(len(msgs)))
			for _, p := range batch {
				if p.done != nil {
					p.done()
				}
			}
			b.mu.Lock()
			b.dequeued(len(msgs))
			b.markSettled()
			b.mu.Unlock()
		}
	}
}

// take removes whole pending writes from the queue, up to maxBatch records
// (at least one pending write), dropping those whose writer's context has ended.
func (b *BatchWriter) take() ([]pendingWrite, []kafka.Message) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var msgs []kafka.Message
	var batch []pendingWrite
	n := 0
	for n < len(b.queue) && (len(batch) == 0 || len(msgs)+len(b.queue[n].msgs) <= b.maxBatch) {
		p := b.queue[n]
		n++
		if p.ctx != nil && p.ctx.Err() != nil {
			b.dequeued(len(p.msgs)) // revoked before it was written: the next owner redoes it
			continue
		}
		msgs = append(msgs, p.msgs...)
		batch = append(batch, p)
	}
	b.queue = b.queue[n:]
	if len(batch) > 0 {
		b.taken++
	}
	return batch, msgs
}

// Settle returns once every batch taken before the call has been written or
// given up, or when ctx ends. A partition handler calls it from Close after its
// generation has ended: its records still queued are dropped (Write), and
// after Settle none of its records is on its way to the broker, so nothing it
// wrote can land after the next owner's records.
func (b *BatchWriter) Settle(ctx context.Context) error {
	b.mu.Lock()
	target := b.taken
	for b.settled < target {
		ch := b.settle
		b.mu.Unlock()
		select {
		case <-ctx.Done():
			return fmt.Errorf("settling the batch writer: %w", ctx.Err())
		case <-ch:
		}
		b.mu.Lock()
	}
	b.mu.Unlock()
	return nil
}

// dequeued counts n records off the queue and wakes every Write waiting for
// room; b.mu is held.
func (b *BatchWriter) dequeued(n int) {
	b.queued -= n
	close(b.space)
	b.space = make(chan struct{})
}

// markSettled counts one taken batch as done; b.mu is held.
func (b *BatchWriter) markSettled() {
	b.settled++
	close(b.settle)
	b.settle = make(chan struct{})
}

func (b *BatchWriter) settleAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.settled < b.taken {
		b.settled = b.taken - 1
		b.markSettled()
	}
}

func (b *BatchWriter) target() string {
	if b.dead != nil {
		return b.dead.Target
	}
	switch w := b.w.(type) {
	case *kafka.Writer:
		return w.Topic
	case interface{ Topic() string }: // a *kafkaio.PartitionWriter
		return w.Topic()
	}
	return "?"
}

// String describes the writer for logs.
func (b *BatchWriter) String() string { return fmt.Sprintf("BatchWriter(max %d)", b.maxBatch) }
