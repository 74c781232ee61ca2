package kafkaio

import (
	"context"
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// writer is what records and dead letters are written with: a *kafka.Writer,
// or a stage's wrapper around one.
type writer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// MaxDeadLetterValueBytes bounds the value copied into a dead letter for a
// record that could not be written: a record refused for its size would be
// refused again by the dead-letter topic, so its value is cut to this many
// bytes and the header deadletter_value_bytes keeps the original size.
const MaxDeadLetterValueBytes = 64 << 10

// deadLetter is m's copy for the dead-letter topic: its key, value and
// headers, then deadletter_reason, then origin (the headers saying where m
// came from and who gave up on it). Both kinds of dead letter are built here,
// so that the admin page reads one layout.
func deadLetter(m kafka.Message, reason error, origin ...kafka.Header) kafka.Message {
	headers := make([]kafka.Header, 0, len(m.Headers)+1+len(origin)+1)
	headers = append(headers, m.Headers...)
	headers = append(headers, kafka.Header{Key: "deadletter_reason", Value: []byte(reason.Error())})
	headers = append(headers, origin...)
	return kafka.Message{Key: m.Key, Value: m.Value, Headers: headers}
}

// DeadLetters copies records a writer could not write to the dead-letter
// topic (<prefix>.deadletter), so that the stage writing them moves on.
type DeadLetters struct {
	// W writes to the dead-letter topic (a *kafka.Writer).
	W writer
	// Target is the topic the records were meant for (header source_topic).
	Target string
	// Writer names who wrote them, for example "router" (header deadletter_writer).
	Writer string
	// Instance names this process (header deadletter_instance).
	Instance string
	// Counter counts the dead-lettered records (nil: not counted).
	Counter prometheus.Counter
}

// Write copies m with why it was refused. Headers: m's own, then
// deadletter_reason, source_topic (the topic m was for), deadletter_writer,
// deadletter_instance and, when the value was cut, deadletter_value_bytes.
func (d *DeadLetters) Write(ctx context.Context, m kafka.Message, reason error) error {
	dl := deadLetter(m, reason,
		kafka.Header{Key: "source_topic", Value: []byte(d.Target)},
		kafka.Header{Key: "deadletter_writer", Value: []byte(d.Writer)},
		kafka.Header{Key: "deadletter_instance", Value: []byte(d.Instance)},
	)
	if len(dl.Value) > MaxDeadLetterValueBytes {
		dl.Headers = append(dl.Headers, kafka.Header{Key: "deadletter_value_bytes", Value: []byte(strconv.Itoa(len(dl.Value)))})
		dl.Value = dl.Value[:MaxDeadLetterValueBytes]
	}
	if err := d.W.WriteMessages(ctx, dl); err != nil {
		return fmt.Errorf("dead-lettering a record for %s: %w", d.Target, err)
	}
	if d.Counter != nil {
		d.Counter.Inc()
	}
	return nil
}

// ConsumedDeadLetters copies records a consumer group can never handle to
// the dead-letter topic, so that their partition moves on.
type ConsumedDeadLetters struct {
	// W writes to the dead-letter topic (a *kafka.Writer).
	W writer
	// Group is the consumer group that gave up (header deadletter_group).
	Group string
	// Instance names this process (header deadletter_instance).
	Instance string
}

// Write copies m, as read from its partition, with why it cannot be handled.
// Headers: m's own, then deadletter_reason, source_topic, source_partition
// and source_offset (where m was read), deadletter_group and
// deadletter_instance.
func (d *ConsumedDeadLetters) Write(ctx context.Context, m kafka.Message, reason error) error {
	dl := deadLetter(m, reason,
		kafka.Header{Key: "source_topic", Value: []byte(m.Topic)},
		kafka.Header{Key: "source_partition", Value: []byte(strconv.Itoa(m.Partition))},
		kafka.Header{Key: "source_offset", Value: []byte(strconv.FormatInt(m.Offset, 10))},
		kafka.Header{Key: "deadletter_group", Value: []byte(d.Group)},
		kafka.Header{Key: "deadletter_instance", Value: []byte(d.Instance)},
	)
	if err := d.W.WriteMessages(ctx, dl); err != nil {
		return fmt.Errorf("writing dead letter for %s/%d@%d: %w", m.Topic, m.Partition, m.Offset, err)
	}
	return nil
}
