package sender

import (
	"github.com/fedpipe/fedpipe/federation/client"
	"github.com/fedpipe/fedpipe/federation/queue"
)

// ClassifyClientError maps the federation client's error kinds onto what the
// destination queues do about a failed transaction.
func ClassifyClientError(err error) queue.Outcome {
	switch client.KindOf(err) {
	case client.KindFatal:
		return queue.Fatal
	case client.KindBackoff:
		return queue.Backoff
	default:
		return queue.Retry
	}
}
