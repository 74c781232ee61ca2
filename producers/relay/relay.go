// Package relay publishes the stream tables to Kafka: the room stream (events
// and current_state_delta_stream, which a homeserver writes) and presence_stream
// (which the presence stage writes), each a stream (stream.go). For every
// stream it publishes in stream order, never skips a row whose transaction
// commits after a later one, and records how far it got only after the broker
// acknowledged.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
)

// Writer is what the relay publishes with: a *kafkaio.PartitionWriter (or a
// *kafka.Writer configured with RequiredAcks: RequireAll, Murmur2Balancer and
// its topic). One WriteMessages call must put each partition's records in one
// record batch, which Kafka writes atomically (see span). A writer with a
// Topic() string method names its topic in dead letters.
type Writer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// Config configures a Relay.
type Config struct {
	// Instance names this process in record headers. Required.
	Instance string
	// PollInterval is the pause between rounds when there is nothing new.
	// Default DefaultPollInterval.
	PollInterval time.Duration
	// BatchSize is the most rows of one stream read and published per round
	// trip. Default DefaultBatchSize.
	BatchSize int
	// MaxRoundBytes and MaxRoundRecords bound the records of one round trip
	// for one topic. A kafkaio.PartitionWriter sends each partition's records of
	// a round trip as one record batch, whatever its size, so these are what
	// bound a batch: MaxRoundBytes keeps it under the topic's
	// max.message.bytes (a batch the broker refuses for size is written again
	// record by record: kafkaio.WriteAll), MaxRoundRecords bounds a round's
	// memory. Default 900 KiB (below Kafka's default 1 MiB
	// message.max.bytes) and kafkaio.RelayBatchRecords.
	MaxRoundBytes   int
	MaxRoundRecords int
	// RetryDelay is the first pause after a failed round (doubling to a
	// minute). Default 100ms.
	RetryDelay time.Duration
}

const (
	// DefaultPollInterval is Config.PollInterval when it is zero: an idle
	// relay's wait is the latency an event commit waits before its round
	// (at 50 ms it was 25 ms on average, a third of the end-to-end p50 at
	// 1,000 events/s); a round of an idle relay is two small queries.
	DefaultPollInterval = 10 * time.Millisecond
	// DefaultBatchSize is Config.BatchSize when it is zero.
	DefaultBatchSize = 1000
)

// Validate fills the defaults of zero fields and reports every invalid
// field, each by name.
func (c *Config) Validate() error {
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.MaxRoundBytes == 0 {
		c.MaxRoundBytes = 900 << 10 // below Kafka's default 1 MiB message.max.bytes
	}
	if c.MaxRoundRecords == 0 {
		c.MaxRoundRecords = kafkaio.RelayBatchRecords
	}
	if c.RetryDelay == 0 {
		c.RetryDelay = 100 * time.Millisecond
	}
	var errs []error
	if c.Instance == "" {
		errs = append(errs, errors.New("relay: Instance must be set"))
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"PollInterval", int64(c.PollInterval)},
		{"BatchSize", int64(c.BatchSize)},
		{"MaxRoundRecords", int64(c.MaxRoundRecords)},
	} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("relay: %s must be positive", f.name))
		}
	}
	return errors.Join(errs...)
}

// Relay publishes stream rows to Kafka.
//
// Its streams are published in a fixed order, and the order is a guarantee:
// the room stream (events and state deltas) comes first, then the others in
// the order of their options. Each round publishes a stream up to the round's
// end before it starts the next, and a failure ends the round, so a record of
// any other stream (presence) at position p reaches Kafka only after every
// room record below p was acknowledged. The router relies on it to route
// presence against membership at least as new (consumers/router/ordering.go).
type Relay struct {
	cfg  Config
	pool *pgxpool.Pool
	log  *slog.Logger
	m    metrics
	// streams in publishing order: the room stream first (see Relay).
	streams []metered
	// added are the streams the options add, after the room stream.
	added []stream
	dead  Writer
	// positions are where each stream is published up to, stored the last
	// stored values (loaded at the first round; used by Run's goroutine only).
	positions, stored map[string]int64
	// rowsQuery asks which streams have rows in a round (withRows).
	rowsQuery string
}

// Option adds to what a Relay publishes.
type Option func(*Relay)

// WithDeadLetters sends rows whose records can never be published (larger
// than the topic takes, or refused by a broker as invalid) to the dead-letter
// topic through w, counted by fedpipe_relay_records_deadlettered_total, and
// the relay moves on. Without it such a row stops Run with an error: retried,
// it would hold back every later row.
func WithDeadLetters(w Writer) Option {
	return func(r *Relay) { r.dead = w }
}

// New returns a Relay writing room records with room and state records with
// state, and the streams its options add.
func New(cfg Config, pool *pgxpool.Pool, room, state Writer, logger *slog.Logger, reg prometheus.Registerer, opts ...Option) (*Relay, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Relay{cfg: cfg, pool: pool, log: logger, m: newMetrics()}
	for _, o := range opts {
		o(r)
	}
	cs := r.m.collectors()
	names := map[string]bool{}
	for _, s := range append([]stream{roomStream{room: room, state: state, rows: &roomRows{events: make([]eventRow, 0, cfg.BatchSize)}}}, r.added...) {
		if names[s.name()] {
			return nil, fmt.Errorf("relay: stream %s added twice", s.name())
		}
		names[s.name()] = true
		p, former := r.m.stream(s)
		r.streams = append(r.streams, p)
		cs = append(cs, former...)
	}
	r.rowsQuery = rowsQuery(r.streams)
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("relay metrics: %w", err)
		}
	}
	return r, nil
}
