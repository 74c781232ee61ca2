package runtime

import (
	"context"

	"github.com/segmentio/kafka-go"
)

// handleFunc is the shape of PartitionHandler.Handle, and of every layer the
// runtime wraps around it (counting.go, retry.go, deadletter.go).
type handleFunc func(ctx context.Context, m kafka.Message, done func()) error

// middleware wraps a handleFunc with one concern.
type middleware func(next handleFunc) handleFunc

// chain wraps h in layers, the first one innermost.
func chain(h handleFunc, layers ...middleware) handleFunc {
	for _, l := range layers {
		h = l(h)
	}
	return h
}
