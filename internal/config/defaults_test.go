package config

import (
	"testing"

	"github.com/fedpipe/fedpipe/admin"
	"github.com/fedpipe/fedpipe/consumers/presence"
	"github.com/fedpipe/fedpipe/consumers/router"
	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/federation/client"
	"github.com/fedpipe/fedpipe/federation/keyserver"
	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/producers/ingest"
	"github.com/fedpipe/fedpipe/producers/relay"
)

// TestDefaultsAreTheComponents: a key left unset means what the component
// does with a zero field, so `fedpipe config example` shows the value in
// force. Each component's Validate fills its zero fields; they must agree
// with Default(), which takes them from the components' exported Default…
// constants: a constant a Validate does not use is caught here.
func TestDefaultsAreTheComponents(t *testing.T) {
	def := Default()
	check := func(key string, got, want any) {
		t.Helper()
		if got != want {
			t.Errorf("%s: the component defaults to %v, the configuration to %v", key, got, want)
		}
	}

	topics := kafkaio.TopicsConfig{}
	if err := topics.Validate(); err != nil {
		t.Fatal(err)
	}
	check("kafka.topic_prefix", topics.Prefix, def.Kafka.TopicPrefix)
	check("kafka.partitions", topics.Partitions, def.Kafka.Partitions)
	check("kafka.outbound_partitions", topics.OutboundPartitions, def.Kafka.OutboundPartitions)
	check("kafka.replication_factor", topics.ReplicationFactor, def.Kafka.ReplicationFactor)

	group := runtime.Config{Brokers: []string{"b:9092"}, GroupID: "g", Topics: []string{"t"}, DeadLetterTopic: "d"}
	if err := group.Validate(); err != nil {
		t.Fatal(err)
	}
	check("kafka.rebalance_timeout", group.RebalanceTimeout, def.Kafka.RebalanceTimeout)
	check("kafka.drain_timeout", group.DrainTimeout, def.Kafka.DrainTimeout)
	check("kafka.stall_after", group.StallAfter, def.Kafka.StallAfter)
	// cmd/fedpipe sets the rebalance timeout and drain timeout of every group
	// from the configuration; the runtime's rule for a zero drain timeout
	// (half the rebalance timeout) must give the configuration's default.
	follows := runtime.Config{Brokers: []string{"b:9092"}, GroupID: "g", Topics: []string{"t"}, DeadLetterTopic: "d",
		RebalanceTimeout: def.Kafka.RebalanceTimeout}
	if err := follows.Validate(); err != nil {
		t.Fatal(err)
	}
	check("kafka.drain_timeout (from kafka.rebalance_timeout)", follows.DrainTimeout, def.Kafka.DrainTimeout)

	adm := admin.Config{Brokers: []string{"b:9092"}, DeadLetterTopic: "d", RoomTopic: "r", RouterGroup: "g"}
	if err := adm.Validate(); err != nil {
		t.Fatal(err)
	}
	check("kafka.stall_after (admin)", adm.StallAfter, def.Kafka.StallAfter)

	rl := relay.Config{Instance: "i"}
	if err := rl.Validate(); err != nil {
		t.Fatal(err)
	}
	check("relay.poll_interval", rl.PollInterval, def.Relay.PollInterval)
	check("relay.batch_size", rl.BatchSize, def.Relay.BatchSize)

	rt := router.Config{ServerName: "hs.test"}
	if err := rt.Validate(); err != nil {
		t.Fatal(err)
	}
	check("router.rooms_per_partition", rt.RoomsPerPartition, def.Router.RoomsPerPartition)
	check("kafka.topic_prefix (router)", rt.Prefix, def.Kafka.TopicPrefix)
	hist := router.HistoryConfig{}
	if err := hist.Validate(); err != nil {
		t.Fatal(err)
	}
	check("router.prune_interval", hist.Interval, def.Router.PruneInterval)

	in := ingest.Config{}
	if err := in.Validate(); err != nil {
		t.Fatal(err)
	}
	check("ingest.max_body_bytes", in.MaxBodyBytes, def.Ingest.MaxBodyBytes)

	pr := presence.Config{ServerName: "hs.test", Prefix: "p"}
	if err := pr.Validate(); err != nil {
		t.Fatal(err)
	}
	check("presence.sync_timeout", pr.Timers.SyncTimeout, def.Presence.SyncTimeout)
	check("presence.idle_timeout", pr.Timers.Idle, def.Presence.IdleTimeout)
	check("presence.ping_interval", pr.Timers.Ping, def.Presence.PingInterval)
	check("presence.instance_timeout", pr.InstanceTimeout, def.Presence.InstanceTimeout)
	check("presence.sweep_interval", pr.SweepInterval, def.Presence.SweepInterval)

	cl := client.Config{Origin: "hs.test"}
	if err := cl.Validate(); err != nil {
		t.Fatal(err)
	}
	check("federation.request_timeout", cl.RequestTimeout, def.Federation.RequestTimeout)

	q := queue.Config{Origin: "hs.test"}
	if err := q.Validate(); err != nil {
		t.Fatal(err)
	}
	check("federation.backoff_initial", q.BackoffInitial, def.Federation.BackoffInitial)
	check("federation.backoff_max", q.BackoffMax, def.Federation.BackoffMax)
	check("federation.max_transaction_bytes", q.MaxTransactionBytes, def.Federation.MaxTransactionBytes)

	ks := keyserver.Config{}
	_ = ks.Validate() // refuses the missing name and keys; the defaults are filled all the same
	check("federation.key_validity", ks.Validity, def.Federation.KeyValidity)
}
