package runtime

import (
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
)

// Config configures a Group.
type Config struct {
	// Brokers, GroupID and Topics name the Kafka cluster, the consumer group
	// and the topics it reads. Required.
	Brokers []string
	GroupID string
	Topics  []string
	// DeadLetterTopic receives poison records. Required.
	DeadLetterTopic string
	// Instance names this member in logs and dead-letter headers. Default
	// DefaultInstance.
	Instance string
	// CommitInterval is how often watermarks are committed. Default
	// DefaultCommitInterval (200ms).
	CommitInterval time.Duration
	// SessionTimeout, RebalanceTimeout and HeartbeatInterval tune the group
	// protocol: a killed member's partitions move after SessionTimeout.
	// Defaults DefaultSessionTimeout (10s), DefaultRebalanceTimeout (10s) and
	// DefaultHeartbeatInterval (1s).
	SessionTimeout, RebalanceTimeout, HeartbeatInterval time.Duration
	// StartOffset applies to partitions without a committed offset. Default
	// (zero) kafka.FirstOffset: nothing is skipped.
	StartOffset int64
	// MaxWait bounds how long a fetch waits for data (default DefaultMaxWait,
	// 500ms, Kafka's fetch.max.wait.ms). A fetch returns as soon as there is
	// data, so it costs no latency; kafka-go also takes it as the deadline for
	// the response's first bytes, so a small value stalls a reader whose
	// broker is slow to answer (a loaded in-process broker: every fetch times
	// out and is retried).
	MaxWait time.Duration
	// DrainTimeout bounds a PartitionHandler's Close: past it, the handler
	// cancels its work (the sender cancels its in-flight transactions). It
	// must be at most half of RebalanceTimeout, and defaults to exactly half
	// (DefaultDrainTimeout, 5s, with the default RebalanceTimeout): a member
	// rejoins only once every revoked partition has drained, and a member
	// that rejoins after the rebalance timeout is expired while its handlers
	// may still be at work, and its partitions go to another member. The
	// other half covers noticing the rebalance (a heartbeat), the cancelled
	// work returning, the last commit and the join.
	DrainTimeout time.Duration
	// MaxInFlight bounds the records fetched but not done, per partition
	// (default DefaultMaxInFlight, 10,000). Records done after one that is
	// not (a slow destination's transaction holds the watermark; the other
	// destinations of its partition go on) do not count, up to
	// maxTrackedPerInFlight times MaxInFlight records above the watermark:
	// what a crash then replays.
	MaxInFlight int
	// StallAfter is how long a partition of the group may have records waiting
	// with no committed progress before it counts as stalled
	// (fedpipe_consumer_stalled_partitions, a warning naming its owner).
	// Default DefaultStallAfter (1m). Every member watches the whole group,
	// so a partition held by a member that no longer exists is seen too.
	// Negative turns the watch off.
	StallAfter time.Duration
	// StallCheckInterval is how often the group's offsets are read for it.
	// Default DefaultStallCheckInterval (10s).
	StallCheckInterval time.Duration
}

// The defaults of Config's zero fields.
const (
	DefaultInstance           = "fedpipe"
	DefaultCommitInterval     = 200 * time.Millisecond
	DefaultSessionTimeout     = 10 * time.Second
	DefaultRebalanceTimeout   = 10 * time.Second
	DefaultHeartbeatInterval  = time.Second
	DefaultMaxWait            = 500 * time.Millisecond
	DefaultMaxInFlight        = 10_000
	DefaultStallAfter         = time.Minute
	DefaultStallCheckInterval = 10 * time.Second
	// DefaultDrainTimeout is DrainTimeout with the default RebalanceTimeout:
	// a zero DrainTimeout is half of RebalanceTimeout, whatever that is.
	DefaultDrainTimeout = DefaultRebalanceTimeout / 2
)

// Validate fills the defaults of zero fields and reports every invalid
// field, each by name.
func (c *Config) Validate() error {
	c.fillDefaults()
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("Brokers must be set"))
	}
	if c.GroupID == "" {
		errs = append(errs, errors.New("GroupID must be set"))
	}
	if len(c.Topics) == 0 {
		errs = append(errs, errors.New("Topics must be set"))
	}
	if c.DeadLetterTopic == "" {
		errs = append(errs, errors.New("DeadLetterTopic must be set"))
	}
	if c.DrainTimeout <= 0 || 2*c.DrainTimeout > c.RebalanceTimeout {
		errs = append(errs, fmt.Errorf("DrainTimeout (the drain timeout) %s must be positive and at most half of RebalanceTimeout %s, or a member still draining is expired and its partitions handled twice at once", c.DrainTimeout, c.RebalanceTimeout))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("consumer group %s: %w", c.GroupID, err)
	}
	return nil
}

// fillDefaults sets each zero field to its default. DrainTimeout follows
// RebalanceTimeout, so it is filled after it.
func (c *Config) fillDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.CommitInterval, DefaultCommitInterval)
	def(&c.SessionTimeout, DefaultSessionTimeout)
	def(&c.RebalanceTimeout, DefaultRebalanceTimeout)
	def(&c.HeartbeatInterval, DefaultHeartbeatInterval)
	def(&c.MaxWait, DefaultMaxWait)
	def(&c.DrainTimeout, c.RebalanceTimeout/2)
	def(&c.StallAfter, DefaultStallAfter)
	def(&c.StallCheckInterval, DefaultStallCheckInterval)
	if c.StartOffset == 0 {
		c.StartOffset = kafka.FirstOffset
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.Instance == "" {
		c.Instance = DefaultInstance
	}
}
