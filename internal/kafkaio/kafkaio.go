// Package kafkaio is fedpipe's Kafka plumbing: writers configured for no loss,
// and the topics with their configs.
package kafkaio

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
)

// Writer is what producers write with; *kafka.Writer implements it.
type Writer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

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

// RelayBatchRecords is the most records a relay writer puts in one record
// batch, and so the most the relay writes in one call (relay.Config's
// MaxRoundRecords). kafka-go allocates a batch's slice of messages at this
// capacity, 152 bytes each, for every partition a write touches: 2,048 is
// 304 KiB (a limit of 1<<20 made it 152 MiB per partition and round).
const RelayBatchRecords = 2048

// NewRelayWriter returns a writer like NewWriter whose batches hold up to
// 1 MiB and RelayBatchRecords records, so that one WriteMessages call within
// both puts each partition's records into a single record batch, written
// atomically. The relay relies on it to keep room order through failed
// writes.
func NewRelayWriter(brokers []string, topic string) *kafka.Writer {
	w := NewWriter(brokers, topic)
	w.BatchSize = RelayBatchRecords
	w.BatchBytes = 1 << 20
	return w
}

// TopicsConfig says which topics exist and how.
type TopicsConfig struct {
	Prefix             string
	Partitions         int
	OutboundPartitions int
	ReplicationFactor  int
	// TypingRetention is the retention of the typing topic (short: typing is stale in seconds).
	TypingRetention time.Duration
}

// Validate fills defaults and reports invalid settings.
func (c *TopicsConfig) Validate() error {
	if c.Prefix == "" {
		c.Prefix = "fedpipe"
	}
	if c.Partitions == 0 {
		c.Partitions = 16
	}
	if c.OutboundPartitions == 0 {
		c.OutboundPartitions = 32
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = 1
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

// WaitForBroker polls until a broker answers or ctx ends.
func WaitForBroker(ctx context.Context, brokers []string) error {
	for {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", brokers[0])
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for broker %s: %w", brokers[0], err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
