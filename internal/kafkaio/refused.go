package kafkaio

import (
	"context"
	"errors"
	"fmt"

	"github.com/segmentio/kafka-go"
)

// Refused reports whether err, from WriteMessages, says records can never be
// written however often they are retried: kafka-go refused a message larger
// than the writer's BatchBytes before sending it (MessageTooLargeError), or a
// broker refused a batch for its size or its contents (MESSAGE_TOO_LARGE,
// RECORD_LIST_TOO_LARGE, INVALID_RECORD; not CORRUPT_MESSAGE, which Kafka
// retries as damage in transit). For kafka.WriteErrors
// it reports whether any message was refused so.
func Refused(err error) bool {
	var we kafka.WriteErrors
	if errors.As(err, &we) {
		for _, e := range we {
			if e != nil && refused(e) {
				return true
			}
		}
		return false
	}
	return refused(err)
}

func refused(err error) bool {
	var tl kafka.MessageTooLargeError
	return errors.As(err, &tl) || errors.Is(err, kafka.MessageSizeTooLarge) || errors.Is(err, kafka.RecordListTooLarge) ||
		errors.Is(err, kafka.InvalidRecord)
}

// ErrNoDeadLetters is returned by WriteAll for a refused record when there is
// nowhere to put it: the caller must stop rather than retry it forever.
var ErrNoDeadLetters = errors.New("record refused and no dead-letter topic configured")

// WriteAll writes msgs with w. Records refused for good (see Refused) are
// dead-lettered through dl and the others written: when a broker refuses a
// batch, its records are written again one at a time, in order, so only the
// culprits go to the dead-letter topic. It returns how many records were
// dead-lettered, and any other error as is: the caller retries msgs, and
// records already written may then be written twice (at least once).
func WriteAll(ctx context.Context, w writer, msgs []kafka.Message, dl *DeadLetters) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	err := w.WriteMessages(ctx, msgs...)
	if err == nil || !Refused(err) {
		return 0, err
	}
	deadLetter := func(m kafka.Message, reason error) error {
		if dl == nil {
			return fmt.Errorf("%w: %w", ErrNoDeadLetters, reason)
		}
		return dl.Write(ctx, m, reason)
	}
	var tl kafka.MessageTooLargeError
	if errors.As(err, &tl) {
		// kafka-go refused it before sending anything.
		if err := deadLetter(tl.Message, fmt.Errorf("%d-byte record: %w", len(tl.Message.Key)+len(tl.Message.Value), err)); err != nil {
			return 0, err
		}
		n, err := WriteAll(ctx, w, tl.Remaining, dl)
		return n + 1, err
	}
	var we kafka.WriteErrors
	if !errors.As(err, &we) || len(we) != len(msgs) {
		if len(msgs) == 1 {
			return 1, deadLetter(msgs[0], err)
		}
		we = make(kafka.WriteErrors, len(msgs))
		for i := range we {
			we[i] = err
		}
	}
	if len(msgs) == 1 {
		return 1, deadLetter(msgs[0], we[0])
	}
	n := 0
	for i, e := range we {
		if e == nil {
			continue
		}
		k, err := WriteAll(ctx, w, msgs[i:i+1], dl)
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
