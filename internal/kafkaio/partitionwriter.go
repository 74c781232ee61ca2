package kafkaio

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"
	"golang.org/x/sync/errgroup"
)

// PartitionWriter writes one topic's records the way the relay needs them: one
// WriteMessages call sends each partition's records as one produce request
// holding one record batch, which Kafka writes atomically, so a failed call
// never lands a later part of a partition's records without the earlier part
// (when they are within MaxRecordBytes together, as the relay keeps its
// rounds; more go as several batches in order, the next sent once the one
// before is acknowledged).
// The partitions' requests go out concurrently, wait for all in-sync replicas,
// and leave at once (no linger). Records go to partitions by murmur2 of the
// key, as the Java client and kafka.Murmur2Balancer place them.
//
// Unlike a *kafka.Writer it keeps no batches of its own: the records are read
// from the caller's slice while the requests are encoded, so its allocation
// per call grows with the records, not with a batch capacity.
//
// A PartitionWriter is safe for concurrent use.
type PartitionWriter struct {
	topic       string
	addr        net.Addr
	maxBytes    int
	maxAttempts int
	backoffMin  time.Duration
	backoffMax  time.Duration
	transport   *kafka.Transport
	client      *kafka.Client
	balancer    kafka.Murmur2Balancer
	// parts is the partition list the balancer takes, cached for the last
	// partition count seen.
	parts  atomic.Pointer[[]int]
	closed atomic.Bool
}

// Defaults of a PartitionWriter, as a *kafka.Writer from NewWriter has them.
const (
	// MaxRecordBytes is the largest record a PartitionWriter sends (key,
	// value and headers, as kafka-go sizes a message); a larger one is
	// refused without being sent (kafka.MessageTooLargeError), as a
	// *kafka.Writer refuses one larger than its BatchBytes.
	MaxRecordBytes = 1 << 20
	// MaxWriteAttempts is how many times a PartitionWriter tries a partition
	// whose write failed with a retriable error (leader moved, request timed
	// out, broken connection) before it returns the error.
	MaxWriteAttempts = 5
)

// NewPartitionWriter returns the writer the relay publishes topic with (see
// PartitionWriter). It has a connection pool of its own, released by Close.
func NewPartitionWriter(brokers []string, topic string) *PartitionWriter {
	addr := kafka.TCP(brokers...)
	t := &kafka.Transport{
		Dial:           (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
		MetadataTopics: []string{topic},
	}
	return &PartitionWriter{
		topic:       topic,
		addr:        addr,
		maxBytes:    MaxRecordBytes,
		maxAttempts: MaxWriteAttempts,
		backoffMin:  100 * time.Millisecond,
		backoffMax:  time.Second,
		transport:   t,
		client:      &kafka.Client{Addr: addr, Transport: t, Timeout: 10 * time.Second},
	}
}

// Topic returns the topic w writes to.
func (w *PartitionWriter) Topic() string { return w.topic }

// Close releases w's connections. Writes under way finish on the
// connections they hold; later writes fail with io.ErrClosedPipe. It is
// idempotent and always returns nil.
func (w *PartitionWriter) Close() error {
	if w.closed.CompareAndSwap(false, true) {
		w.transport.CloseIdleConnections()
	}
	return nil
}

// WriteMessages writes msgs, each partition's records in one record batch,
// and returns when the brokers have acknowledged them all or an error. When
// some records were not written it returns kafka.WriteErrors, one entry per
// message, nil for those written: a record larger than MaxRecordBytes
// has a kafka.MessageTooLargeError (it was not sent), and the records of a
// partition whose write failed share its error (kafka.MessageSizeTooLarge,
// kafka.RecordListTooLarge or kafka.InvalidRecord when the broker refused
// the batch: see Refused). Retriable failures are retried up to
// MaxWriteAttempts times, refreshing the cluster's metadata in between.
// An error before anything was sent (the topic's partitions unknown, ctx
// done, w closed) is returned as is.
func (w *PartitionWriter) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	if w.closed.Load() {
		return io.ErrClosedPipe
	}
	if len(msgs) == 0 {
		return nil
	}
	parts, err := w.partitions(ctx)
	if err != nil {
		return err
	}
	writes, errs := w.group(msgs, parts)
	pending := writes
	for attempt := 1; len(pending) > 0; attempt++ {
		w.produce(ctx, msgs, pending)
		retry := pending[:0:0]
		for _, pw := range pending {
			if pw.err != nil && retriable(pw.err) {
				retry = append(retry, pw)
			}
		}
		if len(retry) == 0 || attempt >= w.maxAttempts || ctx.Err() != nil {
			break
		}
		w.refresh()
		if err := sleep(ctx, backoff(attempt, w.backoffMin, w.backoffMax)); err != nil {
			break
		}
		pending = retry
	}
	for _, pw := range writes {
		if pw.err == nil {
			continue
		}
		if errs == nil {
			errs = make(kafka.WriteErrors, len(msgs))
		}
		err := fmt.Errorf("writing %d records to %s/%d: %w", len(pw.idx), w.topic, pw.partition, pw.err)
		for _, i := range pw.idx {
			errs[i] = err
		}
	}
	if errs != nil {
		return errs
	}
	return nil
}

// group places msgs on parts: a write per partition touched, in the order
// of its first record, listing its records in msgs' order; a record over the
// byte bound has a kafka.MessageTooLargeError in errs (nil when none has).
func (w *PartitionWriter) group(msgs []kafka.Message, parts []int) ([]*partitionWrite, kafka.WriteErrors) {
	var errs kafka.WriteErrors
	// order lists the indexes of msgs grouped by partition, each group in
	// msgs' order; starts[p] is where partition p's group begins.
	partOf := make([]int32, len(msgs))
	starts := make([]int32, len(parts)+1)
	for i := range msgs {
		if recordBytes(&msgs[i]) > w.maxBytes {
			if errs == nil {
				errs = make(kafka.WriteErrors, len(msgs))
			}
			errs[i] = kafka.MessageTooLargeError{Message: msgs[i]}
			partOf[i] = -1
			continue
		}
		p := w.balancer.Balance(msgs[i], parts...)
		partOf[i] = int32(p)
		starts[p+1]++
	}
	for p := range parts {
		starts[p+1] += starts[p]
	}
	order := make([]int32, starts[len(parts)])
	fill := make([]int32, len(parts))
	copy(fill, starts)
	var writes []*partitionWrite
	for i, p := range partOf {
		if p < 0 {
			continue
		}
		if fill[p] == starts[p] {
			writes = append(writes, &partitionWrite{partition: int(p), idx: order[starts[p]:starts[p+1]]})
		}
		order[fill[p]] = int32(i)
		fill[p]++
	}

	return writes, errs
}

// partitionWrite is one partition's records of a WriteMessages call.
type partitionWrite struct {
	partition int
	// idx are the records' indexes in the call's msgs, in order.
	idx []int32
	// err is the last attempt's outcome.
	err error
}

// produce writes each of ws, concurrently, and sets their err. A partition's
// records go as one produce request (one record batch) while they are within
// MaxRecordBytes together, else as several in order, each sent once the one
// before it is acknowledged; the records written are taken off pw.idx, so a
// retry sends only the rest.
func (w *PartitionWriter) produce(ctx context.Context, msgs []kafka.Message, ws []*partitionWrite) {
	one := func(pw *partitionWrite) {
		pw.err = nil
		for len(pw.idx) > 0 {
			n := batchLen(msgs, pw.idx, w.maxBytes)
			res, err := w.client.Produce(ctx, &kafka.ProduceRequest{
				Topic:        w.topic,
				Partition:    pw.partition,
				RequiredAcks: kafka.RequireAll,
				// A reader per attempt: a request abandoned on ctx may still be
				// encoding the last one.
				Records: &partitionRecords{msgs: msgs, idx: pw.idx[:n]},
			})
			if err == nil {
				err = res.Error
			}
			if err != nil {
				pw.err = err
				return
			}
			pw.idx = pw.idx[n:]
		}
	}
	// Each partition's outcome is its pw.err, read by the caller.
	var g errgroup.Group
	for _, pw := range ws[1:] {
		g.Go(func() error { one(pw); return nil })
	}
	one(ws[0])
	_ = g.Wait()
}

// batchLen is how many of the records idx lists, from the first, fit one
// record batch of maxBytes (at least one).
func batchLen(msgs []kafka.Message, idx []int32, maxBytes int) int {
	size := 0
	for n, i := range idx {
		size += recordBytes(&msgs[i])
		if n > 0 && size > maxBytes {
			return n
		}
	}
	return len(idx)
}

// partitions returns the topic's partition list as the cluster's metadata
// gives it (from the connection pool's cache, refreshed every few seconds and
// after a failed attempt), retrying a retriable failure like a write.
func (w *PartitionWriter) partitions(ctx context.Context) ([]int, error) {
	for attempt := 1; ; attempt++ {
		n, err := w.partitionCount(ctx)
		if err == nil {
			return w.partitionList(n), nil
		}
		if attempt >= w.maxAttempts || !retriable(err) || ctx.Err() != nil {
			return nil, fmt.Errorf("looking up the partitions of %s: %w", w.topic, err)
		}
		w.refresh()
		if serr := sleep(ctx, backoff(attempt, w.backoffMin, w.backoffMax)); serr != nil {
			return nil, fmt.Errorf("looking up the partitions of %s: %w (then %w)", w.topic, err, serr)
		}
	}
}

func (w *PartitionWriter) partitionCount(ctx context.Context) (int, error) {
	r, err := w.transport.RoundTrip(ctx, w.addr, &metadataAPI.Request{TopicNames: []string{w.topic}})
	if err != nil {
		return 0, err
	}
	for _, t := range r.(*metadataAPI.Response).Topics {
		if t.Name != w.topic {
			continue
		}
		if t.ErrorCode != 0 {
			return 0, kafka.Error(t.ErrorCode)
		}
		if len(t.Partitions) == 0 {
			return 0, kafka.LeaderNotAvailable
		}
		return len(t.Partitions), nil
	}
	return 0, kafka.UnknownTopicOrPartition
}

// partitionList returns [0, n), cached.
func (w *PartitionWriter) partitionList(n int) []int {
	if p := w.parts.Load(); p != nil && len(*p) == n {
		return *p
	}
	parts := make([]int, n)
	for i := range parts {
		parts[i] = i
	}
	w.parts.Store(&parts)
	return parts
}

// refresh drops w's connection pool, so that the next request dials again and
// waits for fresh metadata: after a broker said it no longer leads a
// partition, or a topic is unknown, the pool's cached layout (refreshed only
// every few seconds) would send the retry to the same place.
func (w *PartitionWriter) refresh() {
	if !w.closed.Load() {
		w.transport.CloseIdleConnections()
	}
}

// retriable reports whether a failed produce may succeed if tried again: the
// broker says so (a kafka.Error that is Temporary: leader moved, request
// timed out, not enough replicas, ...), or the request did not get an answer
// (connection refused or broken, no leader in the cached layout).
func retriable(err error) bool {
	var ke kafka.Error
	if errors.As(err, &ke) {
		return ke.Temporary()
	}
	return !errors.Is(err, context.Canceled) && !errors.Is(err, io.ErrClosedPipe)
}

// backoff is the pause before attempt+1: min doubling up to max.
func backoff(attempt int, min, max time.Duration) time.Duration {
	d := min << (attempt - 1)
	if d > max || d <= 0 {
		d = max
	}
	return d
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// recordBytes sizes a record as kafka-go sizes a message against a writer's
// BatchBytes (kafka.Message.totalSize): key, value, headers and their
// framing.
func recordBytes(m *kafka.Message) int {
	n := 4 + 1 + 1 + 4 + len(m.Key) + 4 + len(m.Value) + 8
	n += 4
	for _, h := range m.Headers {
		n += 2 + len(h.Key) + 4 + len(h.Value)
	}
	return n
}

// partitionRecords reads one partition's records of a call out of the
// caller's messages, without copying them.
type partitionRecords struct {
	msgs       []kafka.Message
	idx        []int32
	next       int
	record     kafka.Record
	key, value bytesReadCloser
}

func (r *partitionRecords) ReadRecord() (*kafka.Record, error) {
	if r.next >= len(r.idx) {
		return nil, io.EOF
	}
	m := &r.msgs[r.idx[r.next]]
	r.next++
	r.record = kafka.Record{Time: m.Time, Headers: m.Headers}
	if m.Key != nil {
		r.key.Reset(m.Key)
		r.record.Key = &r.key
	}
	if m.Value != nil {
		r.value.Reset(m.Value)
		r.record.Value = &r.value
	}
	return &r.record, nil
}

type bytesReadCloser struct{ bytes.Reader }

func (*bytesReadCloser) Close() error { return nil }
