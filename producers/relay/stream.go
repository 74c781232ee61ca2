package relay

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/schema"
)

// stream is one stream table the relay publishes: the room stream (events and
// their state deltas, room.go), presence_stream (presence.go), and one file
// each for the streams to come. Every stream table takes its positions from
// the one stream sequence (events_stream_seq, through
// fedpipe_next_stream_ordering()), which is what lets one visibility wait per
// round cover every stream. The relay reads a stream in position order, writes
// what read returns, and stores the batch's end in relay_positions only once
// the broker has acknowledged every record of the batch.
type stream interface {
	// name is the stream's row in relay_positions and its `stream` metric label.
	name() string
	// read returns the records of the rows in s, in stream order, and the
	// position they take the stream to (after s.after, at most s.upto).
	read(ctx context.Context, db querier, s span) (batch, error)
	// source names the table and position column whose rows in a span are
	// what read publishes: where none are, the round passes the stream
	// over without reading it (see Relay.withRows).
	source() (table, position string)
}

// querier is the database a stream reads from (a *pgxpool.Pool).
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// span is what one read covers: the rows after `after` and at or below
// `upto`, at most `limit` of them and, past the first row, records of about
// maxBytes and maxRecords (per topic) at most, so that each partition's
// records of a batch form one
// record batch, which Kafka writes atomically: a failed write then never
// leaves a key's later record on a topic without its earlier one, and the
// retried batch keeps per-key order.
type span struct {
	after, upto int64
	limit       int
	maxBytes    int
	maxRecords  int
	// instance names this process in the records' headers.
	instance string
}

// message returns a record of kind at position with the headers every relay
// record carries (kind, schema, position, instance).
func (s span) message(kind string, position int64, key, value []byte) kafka.Message {
	return schema.NewHeaders(kind).WithPosition(position).WithInstance(s.instance).Message(key, value)
}

// batch is what one read returns.
type batch struct {
	// writes are written in this order, each acknowledged before the next.
	writes []write
	// end is the position stored once every write is acknowledged.
	end int64
	// published is how many records fedpipe_relay_records_published_total counts.
	published int
}

// write is records for one writer.
type write struct {
	// topic names the records in errors, and in dead letters when w does not
	// name its own topic (a *kafkaio.PartitionWriter or *kafka.Writer does).
	topic string
	w     Writer
	msgs  []kafka.Message
}

// recordSize approximates a record's size in a batch: key, value and headers.
func recordSize(m kafka.Message) int {
	n := len(m.Key) + len(m.Value) + 32
	for _, h := range m.Headers {
		n += len(h.Key) + len(h.Value) + 8
	}
	return n
}

// tableStream is a stream whose table gives one record per row, keyed by one
// of its columns: presence_stream, and the receipts, device-list and to-device
// tables to come.
type tableStream struct {
	// stream is the stream's name (relay_positions, metric label).
	stream string
	// table is the stream table, position its position column.
	table, position string
	// columns are the columns scan reads, the position first.
	columns string
	// kind is the records' kind header.
	kind string
	// scan reads a row into its position, key and record value.
	scan func(pgx.Rows) (position int64, key, value []byte, err error)
	// topic names the records in errors; w writes them.
	topic string
	w     Writer
}

func (t tableStream) name() string { return t.stream }

func (t tableStream) source() (string, string) { return t.table, t.position }

func (t tableStream) read(ctx context.Context, db querier, s span) (batch, error) {
	q := fmt.Sprintf(`SELECT %s FROM %s WHERE %s > $1 AND %s <= $2 ORDER BY %s LIMIT $3`, t.columns, t.table, t.position, t.position, t.position)
	rows, err := db.Query(ctx, q, s.after, s.upto, s.limit)
	if err != nil {
		return batch{}, fmt.Errorf("reading %s: %w", t.table, err)
	}
	defer rows.Close()
	var msgs []kafka.Message
	var last int64
	read, size, cut := 0, 0, false
	for rows.Next() {
		pos, key, value, err := t.scan(rows)
		if err != nil {
			return batch{}, fmt.Errorf("reading %s: %w", t.table, err)
		}
		read++
		m := s.message(t.kind, pos, key, value)
		if len(msgs) > 0 && (size+recordSize(m) > s.maxBytes || s.maxRecords > 0 && len(msgs) >= s.maxRecords) {
			cut = true
			break
		}
		size += recordSize(m)
		msgs, last = append(msgs, m), pos
	}
	if err := rows.Err(); err != nil {
		return batch{}, fmt.Errorf("reading %s: %w", t.table, err)
	}
	// Positions with no row (rolled back, or superseded in a table that keeps
	// one row per key) are passed over.
	end := s.upto
	if cut || read == s.limit {
		end = last
	}
	return batch{writes: []write{{topic: t.topic, w: t.w, msgs: msgs}}, end: end, published: len(msgs)}, nil
}
