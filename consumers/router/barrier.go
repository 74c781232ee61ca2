package router

import (
	"context"
	"time"

	"github.com/segmentio/kafka-go"
)

// Barrier is the presence ordering's wait offered to others: the admin API's
// wait-for-position uses it to tell a caller when the router has routed every
// event the relay had published.
type Barrier struct{ b roomBarrier }

// NewBarrier returns a Barrier on the router group's committed offsets of the
// room topic, checked every poll.
func NewBarrier(brokers []string, group, roomTopic string, poll time.Duration) *Barrier {
	return &Barrier{roomBarrier{client: &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second},
		group: group, topic: roomTopic, poll: poll}}
}

// Wait returns once the group has committed, on every partition of the room
// topic, the end that partition had when Wait was called (so every record
// published before the call has been handled), or with ctx's error.
func (b *Barrier) Wait(ctx context.Context) error { return b.b.wait(ctx) }
