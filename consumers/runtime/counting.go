package runtime

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// counting counts each attempt's outcome: handled, or failed for a reason
// that is retried. Poison records are counted where they are dead-lettered
// (partition.deadLetter), which a Batch reaches without returning the poison;
// a failure cut by the end of the generation is not a failure. Each series
// appears when first counted.
func counting(handled, failed *prometheus.CounterVec) middleware {
	return func(next handleFunc) handleFunc {
		return func(ctx context.Context, m kafka.Message, done func()) error {
			err := next(ctx, m, done)
			switch {
			case err == nil:
				handled.WithLabelValues().Inc()
			case !IsPoison(err) && ctx.Err() == nil:
				failed.WithLabelValues().Inc()
			}
			return err
		}
	}
}
