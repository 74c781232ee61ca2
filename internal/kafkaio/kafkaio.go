// Package kafkaio is fedpipe's Kafka plumbing: writers configured for no loss,
// and the topics with their configs.
package kafkaio

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/schema"
)

// NewWriter returns a writer for topic that waits for all in-sync replicas,
// partitions like the Java client (murmur2), and flushes after a short linger
// instead of kafka-go's 1 s default that would stall every synchronous write.
func NewWriter(brokers []string, topic string) *kafka.Writer {
	return &kafka.Writer{
		Addr:                   kafka.TCP(brokers...),
		Topic:                  topic,
		RequiredAcks:           kafka.RequireAll,
		Balancer:               &kafka.Murmur2Balancer{},
		BatchTimeout:           2 * time.Millisecond,
		BatchSize:              1000,
		BatchBytes:             1 << 20,
		MaxAttempts:            5,
		AllowAutoTopicCreation: false,
	}
}

// RelayBatchRecords is the most records the relay writes to one topic in one
// call (relay.Config's MaxRoundRecords), and so the most a partition's record
// batch holds: it bounds the memory of a round, which a PartitionWriter sends
// without copying it into batches of its own.
const RelayBatchRecords = 2048

// TopicsConfig says which topics exist and how.
type TopicsConfig struct {
	// Prefix is the topic prefix: topics are <Prefix>.<stream>. Default
	// schema.DefaultPrefix.
	Prefix string
	// Partitions is the partition count of every topic but the outbound one.
	// Default DefaultPartitions (16).
	Partitions int
	// OutboundPartitions is the partition count of <Prefix>.outbound. Default
	// DefaultOutboundPartitions (32).
	OutboundPartitions int
	// ReplicationFactor is the replication factor of every topic. Default
	// DefaultReplicationFactor (1).
	ReplicationFactor int
	// TypingRetention is the retention of the typing topic (short: typing is
	// stale in seconds). Default 1m.
	TypingRetention time.Duration
}

// The defaults of TopicsConfig's zero fields.
const (
	DefaultPartitions         = 16
	DefaultOutboundPartitions = 32
	DefaultReplicationFactor  = 1
)

// Validate fills defaults and reports invalid settings.
func (c *TopicsConfig) Validate() error {
	if c.Prefix == "" {
		c.Prefix = schema.DefaultPrefix
	}
	if c.Partitions == 0 {
		c.Partitions = DefaultPartitions
	}
	if c.OutboundPartitions == 0 {
		c.OutboundPartitions = DefaultOutboundPartitions
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = DefaultReplicationFactor
	}
	if c.TypingRetention == 0 {
		c.TypingRetention = time.Minute
	}
	if c.Partitions < 0 || c.OutboundPartitions < 0 || c.ReplicationFactor < 0 {
		return errors.New("topics: partitions and replication factor must be positive")
	}
	return nil
}

// Topics lists every topic with its partitions and configs.
func (c TopicsConfig) Topics() []kafka.TopicConfig {
	t := func(stream string, parts int, configs ...kafka.ConfigEntry) kafka.TopicConfig {
		return kafka.TopicConfig{Topic: c.Prefix + "." + stream, NumPartitions: parts, ReplicationFactor: c.ReplicationFactor, ConfigEntries: configs}
	}
	return []kafka.TopicConfig{
		t("room", c.Partitions),
		t("state", c.Partitions, kafka.ConfigEntry{ConfigName: "cleanup.policy", ConfigValue: "compact"}),
		t("outbound", c.OutboundPartitions),
		t("deadletter", c.Partitions),
		t("presence", c.Partitions),
		t("usersync", c.Partitions),
		t("typing", c.Partitions, kafka.ConfigEntry{ConfigName: "retention.ms", ConfigValue: strconv.FormatInt(c.TypingRetention.Milliseconds(), 10)}),
		t("receipts", c.Partitions),
		t("devicelists", c.Partitions),
		t("todevice", c.Partitions),
	}
}

// CreateTopics creates the missing topics. Existing ones are left alone; a
// partition count that differs from the configuration is reported, since
// changing it would move keys between partitions.
func CreateTopics(ctx context.Context, brokers []string, cfg TopicsConfig, logger *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 30 * time.Second}
	want := cfg.Topics()
	resp, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: want})
	if err != nil {
		return fmt.Errorf("creating topics on %v: %w", brokers, err)
	}
	var errs []error
	for _, tc := range want {
		err := resp.Errors[tc.Topic]
		switch {
		case err == nil:
			logger.Info("created topic", "topic", tc.Topic, "partitions", tc.NumPartitions)
		case errors.Is(err, kafka.TopicAlreadyExists):
			if n, perr := partitions(ctx, client, tc.Topic); perr == nil && n != tc.NumPartitions {
				logger.Warn("topic exists with another partition count; keeping it", "topic", tc.Topic, "partitions", n, "configured", tc.NumPartitions)
			}
		default:
			errs = append(errs, fmt.Errorf("creating topic %s: %w", tc.Topic, err))
		}
	}
	return errors.Join(errs...)
}

// Partitions asks the brokers how many partitions topic has.
func Partitions(ctx context.Context, brokers []string, topic string) (int, error) {
	n, err := partitions(ctx, &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 30 * time.Second}, topic)
	if err != nil {
		return 0, fmt.Errorf("asking %v for the partitions of %s: %w", brokers, topic, err)
	}
	return n, nil
}

func partitions(ctx context.Context, c *kafka.Client, topic string) (int, error) {
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return 0, err
	}
	for _, t := range md.Topics {
		if t.Name == topic {
			return len(t.Partitions), t.Error
		}
	}
	return 0, fmt.Errorf("topic %s not found", topic)
}

// TopicDurations asks the brokers for a topic's millisecond settings; a
// negative one (retention.ms = -1: forever) is returned as -1.
func TopicDurations(ctx context.Context, brokers []string, topic string, names ...string) (map[string]time.Duration, error) {
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	resp, err := client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, ConfigNames: names,
	}}})
	if err != nil {
		return nil, fmt.Errorf("asking %v for %v of %s: %w", brokers, names, topic, err)
	}
	out := map[string]time.Duration{}
	for _, res := range resp.Resources {
		if res.Error != nil {
			return nil, fmt.Errorf("asking for %v of %s: %w", names, topic, res.Error)
		}
		for _, e := range res.ConfigEntries {
			ms, err := strconv.ParseInt(e.ConfigValue, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%s of %s is %q: %w", e.ConfigName, topic, e.ConfigValue, err)
			}
			if ms < 0 {
				out[e.ConfigName] = -1
				continue
			}
			out[e.ConfigName] = time.Duration(ms) * time.Millisecond
		}
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			return nil, fmt.Errorf("the brokers did not say the %s of %s", n, topic)
		}
	}
	return out, nil
}

// Partitioner returns the partition of a key among n partitions as a
// writer's kafka.Murmur2Balancer places it (Kafka's default partitioner):
// the router groups an event's destinations by it and the sender tells its
// own destinations by it, so both must count the same way.
func Partitioner(n int) func(key string) int {
	parts := make([]int, max(n, 1))
	for i := range parts {
		parts[i] = i
	}
	balancer := &kafka.Murmur2Balancer{}
	return func(key string) int {
		return balancer.Balance(kafka.Message{Key: []byte(key)}, parts...)
	}
}
