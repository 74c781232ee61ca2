package runtime

import (
	"context"
	"log/slog"

	"github.com/segmentio/kafka-go"
)

// deadLetterFunc dead-letters a record of the partition being handled: it is
// counted, logged and copied to the dead-letter topic (kafkaio.ConsumedDeadLetters).
// Both ways a record turns out poison reach the same one: Handle returns the
// poison (deadLettering), or a Batch finds one of its kept records poison and
// takes the function from its context (deadLetterFrom).
type deadLetterFunc func(ctx context.Context, m kafka.Message, reason error) error

type deadLetterKey struct{}

// deadLetterFrom is the dead-letter function of the partition whose Handle
// got ctx (nil outside one).
func deadLetterFrom(ctx context.Context) deadLetterFunc {
	f, _ := ctx.Value(deadLetterKey{}).(deadLetterFunc)
	return f
}

// deadLettering sends a record whose handling returns poison (IsPoison) to
// the dead-letter topic through deadLetter, and then it is done. A dead letter
// that cannot be written is returned: the record must not be skipped, so the
// member stops, unless the generation ended under the write (the record is
// not done, and its next owner redoes it).
func deadLettering(deadLetter deadLetterFunc, log *slog.Logger) middleware {
	return func(next handleFunc) handleFunc {
		return func(ctx context.Context, m kafka.Message, done func()) error {
			err := next(context.WithValue(ctx, deadLetterKey{}, deadLetter), m, done)
			if err == nil || !IsPoison(err) {
				return err
			}
			if err := deadLetter(ctx, m, err); err != nil {
				if ctx.Err() != nil {
					log.Info("dead letter cut by the end of the generation; the next owner redoes it", "offset", m.Offset)
				}
				return err
			}
			done()
			return nil
		}
	}
}
