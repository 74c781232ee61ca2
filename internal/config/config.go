// Package config is fedpipe's one configuration file: the YAML schema, its defaults,
// validation, and the FEDPIPE_* environment and --flag overrides of every key.
//
// Components keep their own Config structs; cmd/fedpipe maps this file onto them.
package config

import (
	"os"
	"path/filepath"
	"time"

	"github.com/fedpipe/fedpipe/consumers/presence"
	"github.com/fedpipe/fedpipe/consumers/router"
	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/federation/client"
	"github.com/fedpipe/fedpipe/federation/keyserver"
	fedpresence "github.com/fedpipe/fedpipe/federation/presence"
	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/producers/ingest"
	"github.com/fedpipe/fedpipe/producers/relay"
	"github.com/fedpipe/fedpipe/schema"
)

// Config is the whole fedpipe configuration file.
type Config struct {
	// ServerName is the Matrix server name fedpipe sends federation traffic for.
	ServerName string `yaml:"server_name" doc:"Matrix server name of the homeserver fedpipe sends for (the origin of every transaction)."`
	// Instance names this process in record headers, consumer-group member ids and
	// logs; Load makes an empty one the host name.
	Instance string `yaml:"instance" doc:"Name of this process in record headers and logs. Empty: this host's name."`
	// DataDir holds the embedded broker's log, the private PostgreSQL cluster and the signing key.
	DataDir string `yaml:"data_dir" doc:"Directory for the embedded broker, the private PostgreSQL cluster and the generated signing key."`
	// SigningKeyPath is the Synapse-format ed25519 key file; empty means <data_dir>/signing.key.
	SigningKeyPath string `yaml:"signing_key_path" doc:"Synapse-format signing key file (ed25519 <version> <seed>). Empty: <data_dir>/signing.key, generated on first run."`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level" doc:"debug, info, warn or error."`

	Kafka      Kafka      `yaml:"kafka" doc:"Kafka brokers and topics."`
	Database   Database   `yaml:"database" doc:"PostgreSQL, where the homeserver's stream tables and fedpipe's own state live."`
	Relay      Relay      `yaml:"relay" doc:"The relay: stream tables to Kafka."`
	Ingest     Ingest     `yaml:"ingest" doc:"The ingest HTTP API for homeservers not written in Go."`
	Router     Router     `yaml:"router" doc:"The router: room records to outbound records per destination."`
	Presence   Presence   `yaml:"presence" doc:"The presence stage: user syncs to presence states (Synapse's timers by default)."`
	Admin      Admin      `yaml:"admin" doc:"The operations HTTP listener: /metrics, the admin API (Synapse's federation admin API and fedpipe's) and the status page at /."`
	Federation Federation `yaml:"federation" doc:"Matrix federation: outbound discovery, HTTPS, transactions and backoff; the listener publishing fedpipe's signing keys."`
}

// Kafka configures the brokers and topics.
type Kafka struct {
	Brokers            []string      `yaml:"brokers" doc:"Bootstrap brokers (host:port, comma-separated in env/flags). Empty: start the embedded broker."`
	EmbeddedPort       int           `yaml:"embedded_port" doc:"Port of the embedded broker on 127.0.0.1 (kcat -b 127.0.0.1:PORT attaches to it)."`
	TopicPrefix        string        `yaml:"topic_prefix" doc:"Topic names are <prefix>.<stream>, consumer group ids <prefix>-<stage>."`
	Partitions         int           `yaml:"partitions" doc:"Partitions of each stream topic; the most members a stage's group can use."`
	OutboundPartitions int           `yaml:"outbound_partitions" doc:"Partitions of <prefix>.outbound when it is created; the most sender members. The sender counts the topic's real partitions."`
	ReplicationFactor  int           `yaml:"replication_factor" doc:"Replication factor for created topics (3 on a production cluster)."`
	RebalanceTimeout   time.Duration `yaml:"rebalance_timeout" doc:"How long a stage's group waits for its members to rejoin at a rebalance; a member later than this is expired and its partitions go to others."`
	DrainTimeout       time.Duration `yaml:"drain_timeout" doc:"How long a revoked partition's work may take to finish before it is cancelled (the sender's in-flight transactions). At most half of rebalance_timeout, so a member never rejoins late while it still sends; federation.request_timeout may be longer: a revoked destination's send is cancelled, not waited for."`
	StallAfter         time.Duration `yaml:"stall_after" doc:"A partition of a stage's group with records waiting and no committed progress for this long is stalled: fedpipe_consumer_stalled_partitions and a warning naming its owner. Negative turns the watch off."`
}

// Database configures PostgreSQL.
type Database struct {
	URL          string `yaml:"url" doc:"PostgreSQL URL. Empty: start a private cluster under <data_dir>/postgres from the installed server binaries."`
	EmbeddedPort int    `yaml:"embedded_port" doc:"Port of the private cluster on 127.0.0.1."`
	MaxConns     int    `yaml:"max_conns" doc:"Connection pool size."`
}

// Relay configures the stream-table relay.
type Relay struct {
	PollInterval time.Duration `yaml:"poll_interval" doc:"How often the relay looks for new stream rows when idle."`
	BatchSize    int           `yaml:"batch_size" doc:"Rows read and published per round trip."`
}

// Router configures the router stage.
type Router struct {
	RoomsPerPartition int           `yaml:"rooms_per_partition" doc:"Rooms whose membership each owned room partition keeps in memory; the least recently used beyond it are reloaded from PostgreSQL when next seen."`
	MembershipHistory time.Duration `yaml:"membership_history" doc:"How long superseded membership changes are kept for replays: 0 follows the room topic (its retention.ms plus segment.ms plus a day, asked of the brokers each round: segments are deleted whole; a topic kept forever keeps them forever); negative keeps them forever. Never set it below the room topic's retention plus segment.ms."`
	PruneInterval     time.Duration `yaml:"prune_interval" doc:"How often the router prunes its membership history."`
}

// Presence configures the presence stage.
type Presence struct {
	SyncTimeout     time.Duration `yaml:"sync_timeout" doc:"A user who stops syncing everywhere goes offline this long after the last sync (Synapse: 30s)."`
	IdleTimeout     time.Duration `yaml:"idle_timeout" doc:"An online user without activity for this long becomes unavailable (Synapse: 5m)."`
	PingInterval    time.Duration `yaml:"ping_interval" doc:"Users who are not offline are re-announced to remote servers this often, spread evenly (Synapse: 25m; remotes time out after 30m)."`
	InstanceTimeout time.Duration `yaml:"instance_timeout" doc:"A sync worker silent this long (no record, not even instance_alive) has vanished: its users stop syncing there (Synapse: 5m)."`
	SweepInterval   time.Duration `yaml:"sweep_interval" doc:"How often the presence timers are checked."`
}

// Ingest configures the ingest HTTP API.
type Ingest struct {
	Listen       string `yaml:"listen" doc:"Address of the ingest API. Empty: do not serve it."`
	Token        string `yaml:"token" doc:"Bearer token callers must present. Empty: no authentication, allowed only when listen is a loopback address (the ingest API decides who is in which room and every local user's presence)."`
	MaxBodyBytes int64  `yaml:"max_body_bytes" doc:"Largest accepted request body."`
}

// Admin configures the operations listener.
type Admin struct {
	Listen string `yaml:"listen" doc:"Address serving /metrics, the admin API and the status page. Empty: do not serve it."`
	Token  string `yaml:"token" doc:"Bearer token callers must present. Empty: no authentication, allowed only when listen is a loopback address."`
}

// Federation configures outbound federation.
type Federation struct {
	Static              map[string]string `yaml:"static" doc:"Server name -> host:port, overriding discovery (private deployments, tests). Env/flags: name=host:port,name2=host:port."`
	CAFile              string            `yaml:"ca_file" doc:"Extra CA certificate (PEM) to trust besides the system roots."`
	InsecureSkipVerify  bool              `yaml:"insecure_skip_verify" doc:"Do not verify remote TLS certificates. Never in production."`
	AllowedNetworks     []string          `yaml:"allowed_networks" doc:"CIDRs allowed although private/loopback/link-local (refused by default)."`
	RequestTimeout      time.Duration     `yaml:"request_timeout" doc:"Timeout of one transaction request."`
	BackoffInitial      time.Duration     `yaml:"backoff_initial" doc:"First backoff of a failing destination (Synapse: 10m)."`
	BackoffMax          time.Duration     `yaml:"backoff_max" doc:"Longest backoff of a failing destination (Synapse: 168h)."`
	MaxTransactionBytes int               `yaml:"max_transaction_bytes" doc:"Byte budget of one transaction's body: what would pass it goes in the next transaction (at least 131072; 1 MiB suits a receiver behind a proxy with nginx's default request limit)."`
	Linger              time.Duration     `yaml:"linger" doc:"How long an idle destination waits, once something is queued for it, before its first transaction, so that what arrives meanwhile goes in it too (fewer, fuller transactions under light traffic). 0: send at once."`
	Listen              string            `yaml:"listen" doc:"Address of the federation-facing listener serving GET /_matrix/key/v2/server (fedpipe's signing keys, which receivers fetch to verify its transactions) for the stage 'keys'. Empty: do not serve it (the homeserver publishes fedpipe's key itself)."`
	TLSCert             string            `yaml:"tls_cert" doc:"Certificate chain (PEM) for the server name, served on federation.listen. Empty together with tls_key: plain HTTP, for a TLS-terminating proxy in front."`
	TLSKey              string            `yaml:"tls_key" doc:"Private key (PEM) of federation.tls_cert."`
	KeyValidity         time.Duration     `yaml:"key_validity" doc:"How long receivers may cache the published keys: valid_until_ts is now plus this (Synapse: 24h)."`
}

// Default returns the configuration used when a key is not set anywhere.
// Its Instance is empty, which Load makes the host name: a copied file does not
// give every host one name.
//
// A key that configures a component takes the component's own default (its
// exported Default… constant), so the two cannot disagree. The literals here
// are the keys only this file knows (the process, the embedded broker and
// database, the listeners).
func Default() Config {
	return Config{
		ServerName: "localhost",
		DataDir:    "./data",
		LogLevel:   "info",
		Kafka: Kafka{
			EmbeddedPort:       9092,
			TopicPrefix:        schema.DefaultPrefix,
			Partitions:         kafkaio.DefaultPartitions,
			OutboundPartitions: kafkaio.DefaultOutboundPartitions,
			ReplicationFactor:  kafkaio.DefaultReplicationFactor,
			RebalanceTimeout:   runtime.DefaultRebalanceTimeout,
			DrainTimeout:       runtime.DefaultDrainTimeout,
			StallAfter:         runtime.DefaultStallAfter,
		},
		Database: Database{EmbeddedPort: 5433, MaxConns: 16},
		Relay:    Relay{PollInterval: relay.DefaultPollInterval, BatchSize: relay.DefaultBatchSize},
		Router:   Router{RoomsPerPartition: router.DefaultRoomsPerPartition, PruneInterval: router.DefaultPruneInterval},
		Ingest:   Ingest{Listen: "127.0.0.1:8008", MaxBodyBytes: ingest.DefaultMaxBodyBytes},
		Presence: Presence{
			SyncTimeout:     fedpresence.DefaultTimers.SyncTimeout,
			IdleTimeout:     fedpresence.DefaultTimers.Idle,
			PingInterval:    fedpresence.DefaultTimers.Ping,
			InstanceTimeout: presence.DefaultInstanceTimeout,
			SweepInterval:   presence.DefaultSweepInterval,
		},
		Admin: Admin{Listen: "127.0.0.1:9100"},
		Federation: Federation{
			RequestTimeout:      client.DefaultRequestTimeout,
			BackoffInitial:      queue.DefaultBackoffInitial,
			BackoffMax:          queue.DefaultBackoffMax,
			KeyValidity:         keyserver.DefaultValidity,
			MaxTransactionBytes: queue.DefaultMaxTransactionBytes,
			Linger:              queue.DefaultLinger,
		},
	}
}

// HostInstance is the instance name an empty instance stands for: the host
// name, or "fedpipe" where the host has none.
func HostInstance() string {
	if host, err := os.Hostname(); err == nil && host != "" {
		return host
	}
	return "fedpipe"
}

// KeyPath is the signing key file in use.
func (c *Config) KeyPath() string {
	if c.SigningKeyPath != "" {
		return c.SigningKeyPath
	}
	return filepath.Join(c.DataDir, "signing.key")
}

// Embedded reports whether fedpipe starts its own broker and database.
func (c *Config) Embedded() (broker, database bool) {
	return len(c.Kafka.Brokers) == 0, c.Database.URL == ""
}
