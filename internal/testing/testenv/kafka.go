package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// BrokersEnv names the environment variable that points tests at a running Apache
// Kafka cluster (comma-separated bootstrap addresses; `scripts/kafka start`
// prints one). Unset, each test gets its own in-process kfake broker.
const BrokersEnv = "FEDPIPE_TEST_KAFKA_BROKERS"

// Kinds of broker a test runs on.
const (
	KindKfake  = "kfake"
	KindApache = "apache-kafka"
)

// Kafka is the broker a test talks to: a kfake broker of its own, or the Apache
// Kafka cluster named by FEDPIPE_TEST_KAFKA_BROKERS, shared by every test of the
// run. Either way the test's topics and consumer groups carry Prefix, unique to
// the test, so tests never see each other's records or group members.
type Kafka struct {
	// Addr is a bootstrap address.
	Addr string
	// Kind is KindKfake or KindApache.
	Kind string
	// Prefix starts every topic name and group id of the test; use it as
	// kafka.topic_prefix.
	Prefix string
	// Cluster is the kfake broker, nil on Apache Kafka: tests that use its
	// control functions call RequireKfake.
	Cluster *kfake.Cluster
}

// NewKafka returns the broker for t and logs which one it is. The kfake options
// apply only to a kfake broker; the Apache broker that scripts/kafka starts is
// configured the same way where tests need it (group.min.session.timeout.ms=100,
// no auto topic creation). On Apache Kafka the test's topics and groups are
// deleted when it ends.
func NewKafka(t testing.TB, opts ...kfake.Opt) *Kafka {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	k := &Kafka{Prefix: "t" + hex.EncodeToString(b[:])}
	if env := os.Getenv(BrokersEnv); env != "" {
		k.Kind, k.Addr = KindApache, strings.Split(env, ",")[0]
		t.Cleanup(func() { k.cleanup(t) })
	} else {
		k.Kind = KindKfake
		k.Cluster, k.Addr = Broker(t, opts...)
	}
	t.Logf("kafka: %s at %s, topics and groups %s.*", k.Kind, k.Addr, k.Prefix)
	return k
}

// Apache reports whether the test runs on Apache Kafka.
func (k *Kafka) Apache() bool { return k.Kind == KindApache }

// RequireKfake skips the test on Apache Kafka, for tests that drive kfake's
// control functions (injected faults, moved leaders), and returns the cluster.
func (k *Kafka) RequireKfake(t testing.TB, why string) *kfake.Cluster {
	t.Helper()
	if k.Cluster == nil {
		t.Skipf("kfake only (%s); this run is on %s", why, k.Kind)
	}
	return k.Cluster
}

// Topic returns the test's name for a topic: Prefix.name.
func (k *Kafka) Topic(name string) string { return k.Prefix + "." + name }

// Group returns the test's id for a consumer group: Prefix-name, as fedpipe
// names its groups after kafka.topic_prefix.
func (k *Kafka) Group(name string) string { return k.Prefix + "-" + name }

// CreateTopic creates the test's topic Prefix.name with configs (topic-level
// settings such as max.message.bytes) and waits until every partition has a
// leader, so a writer with few attempts does not race the creation. It returns
// the topic's full name.
func (k *Kafka) CreateTopic(t testing.TB, name string, partitions int, configs map[string]string) string {
	t.Helper()
	topic := k.Topic(name)
	if k.Cluster != nil {
		if err := k.Cluster.CreateTopic(topic, int32(partitions), configs); err != nil {
			t.Fatalf("creating topic %s: %v", topic, err)
		}
		return topic
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tc := kafka.TopicConfig{Topic: topic, NumPartitions: partitions, ReplicationFactor: 1}
	for n, v := range configs {
		tc.ConfigEntries = append(tc.ConfigEntries, kafka.ConfigEntry{ConfigName: n, ConfigValue: v})
	}
	c := k.client()
	resp, err := c.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{tc}})
	if err == nil {
		err = resp.Errors[topic]
	}
	if err != nil {
		t.Fatalf("creating topic %s on %s: %v", topic, k.Addr, err)
	}
	if err := k.WaitForLeaders(ctx, topic); err != nil {
		t.Fatal(err)
	}
	return topic
}

// WaitForLeaders polls the brokers' metadata until every partition of each
// topic has a leader (Apache Kafka creates topics asynchronously).
func (k *Kafka) WaitForLeaders(ctx context.Context, topics ...string) error {
	c := k.client()
	for {
		md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
		ready := err == nil && len(md.Topics) == len(topics)
		if ready {
			for _, tp := range md.Topics {
				if tp.Error != nil || len(tp.Partitions) == 0 {
					ready = false
				}
				for _, p := range tp.Partitions {
					if p.Error != nil || p.Leader.Host == "" {
						ready = false
					}
				}
			}
		}
		if ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for leaders of %v on %s: %v: %w", topics, k.Addr, err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (k *Kafka) client() *kafka.Client {
	return &kafka.Client{Addr: kafka.TCP(k.Addr), Timeout: 30 * time.Second}
}

// cleanup deletes the test's topics and consumer groups from the shared
// broker. It runs after the test's own cleanups (its consumers have left);
// failures are logged, not fatal: the next run starts a fresh broker anyway.
func (k *Kafka) cleanup(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := k.client()
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{})
	if err != nil {
		t.Logf("listing topics to delete: %v", err)
		return
	}
	var topics []string
	for _, tp := range md.Topics {
		if strings.HasPrefix(tp.Name, k.Prefix+".") {
			topics = append(topics, tp.Name)
		}
	}
	if len(topics) > 0 {
		resp, err := c.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: topics})
		if err == nil {
			for _, e := range resp.Errors {
				err = errors.Join(err, e)
			}
		}
		if err != nil {
			t.Logf("deleting topics %v: %v", topics, err)
		}
	}
	groups, err := c.ListGroups(ctx, &kafka.ListGroupsRequest{})
	if err != nil {
		t.Logf("listing groups to delete: %v", err)
		return
	}
	var ids []string
	for _, g := range groups.Groups {
		if strings.HasPrefix(g.GroupID, k.Prefix+"-") {
			ids = append(ids, g.GroupID)
		}
	}
	if len(ids) > 0 {
		resp, err := c.DeleteGroups(ctx, &kafka.DeleteGroupsRequest{GroupIDs: ids})
		if err == nil {
			for g, e := range resp.Errors {
				if e != nil {
					err = errors.Join(err, fmt.Errorf("%s: %w", g, e))
				}
			}
		}
		if err != nil {
			t.Logf("deleting groups %v: %v", ids, err)
		}
	}
}

// AlterTopicConfig sets topic-level configs of topic (a full name), as an
// operator would with kafka-configs.sh.
func (k *Kafka) AlterTopicConfig(t testing.TB, topic string, configs map[string]string) {
	t.Helper()
	res := kafka.IncrementalAlterConfigsRequestResource{ResourceType: kafka.ResourceTypeTopic, ResourceName: topic}
	for n, v := range configs {
		res.Configs = append(res.Configs, kafka.IncrementalAlterConfigsRequestConfig{Name: n, Value: v, ConfigOperation: kafka.ConfigOperationSet})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := k.client().IncrementalAlterConfigs(ctx, &kafka.IncrementalAlterConfigsRequest{Resources: []kafka.IncrementalAlterConfigsRequestResource{res}})
	if err == nil {
		for _, r := range resp.Resources {
			err = errors.Join(err, r.Error)
		}
	}
	if err != nil {
		t.Fatalf("setting %v on topic %s: %v", configs, topic, err)
	}
}

// TopicConfig returns the value of a topic-level config of topic as the
// brokers report it (set on the topic, or the broker's default).
func (k *Kafka) TopicConfig(t testing.TB, topic, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := k.client().DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{
		{ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, ConfigNames: []string{name}}}})
	if err != nil {
		t.Fatalf("describing configs of %s: %v", topic, err)
	}
	for _, r := range resp.Resources {
		if r.Error != nil {
			t.Fatalf("describing configs of %s: %v", topic, r.Error)
		}
		for _, e := range r.ConfigEntries {
			if e.ConfigName == name {
				return e.ConfigValue
			}
		}
	}
	t.Fatalf("topic %s has no config %s", topic, name)
	return ""
}
