package runtime

import (
	"context"
	"log/slog"
	"time"

	"github.com/segmentio/kafka-go"
)

// retrying hands a record that failed for a transient reason again, with
// backoff, until it is handled or poison or the generation ends (then it
// returns the last error: the record is not done, and its next owner redoes it).
func retrying(log *slog.Logger) middleware {
	return func(next handleFunc) handleFunc {
		return func(ctx context.Context, m kafka.Message, done func()) error {
			for attempt := 0; ; attempt++ {
				err := next(ctx, m, done)
				if err == nil || IsPoison(err) || ctx.Err() != nil {
					return err
				}
				wait := retryBackoff(attempt)
				log.Warn("handling failed; retrying the record", "offset", m.Offset, "err", err, "in", wait)
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return err
				case <-t.C:
				}
			}
		}
	}
}

// retryBackoff is the wait before the retry that follows failed attempt
// (from 0): 50 ms doubling, at most 10 s.
func retryBackoff(attempt int) time.Duration {
	return min(time.Duration(1<<min(attempt, 8))*50*time.Millisecond, 10*time.Second)
}
