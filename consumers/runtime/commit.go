package runtime

import (
	"sync"

	"github.com/segmentio/kafka-go"
)

// committer commits the offsets of one generation's partitions. Commits
// asked for while one is in flight go together in the next request (group
// commit): every partition commits each CommitInterval, and a request each
// through the generation's one coordinator connection kept a core's tenth
// busy in kafka-go's response wait (each waiter spinning on the others'
// responses) in an end-to-end run. Each commit still returns once its
// offset is committed, or failed to be.
type committer struct {
	gen *kafka.Generation

	mu      sync.Mutex
	offsets map[string]map[int]int64 // waiting, by topic and partition
	waiters []chan error

	sending sync.Mutex // held by the commit sending a request
}

// commit commits offset for topic's partition, with the others waiting.
func (c *committer) commit(topic string, partition int, offset int64) error {
	done := make(chan error, 1)
	c.mu.Lock()
	if c.offsets == nil {
		c.offsets = map[string]map[int]int64{}
	}
	if c.offsets[topic] == nil {
		c.offsets[topic] = map[int]int64{}
	}
	c.offsets[topic][partition] = max(c.offsets[topic][partition], offset)
	c.waiters = append(c.waiters, done)
	c.mu.Unlock()
	c.sending.Lock()
	defer c.sending.Unlock()
	select {
	case err := <-done: // sent with an earlier request
		return err
	default:
	}
	c.mu.Lock()
	offsets, waiters := c.offsets, c.waiters
	c.offsets, c.waiters = nil, nil
	c.mu.Unlock()
	err := c.gen.CommitOffsets(offsets)
	for _, w := range waiters {
		w <- err
	}
	return <-done
}
