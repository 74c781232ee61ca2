// Package config is fedpipe's one configuration file: the YAML schema, its defaults,
// validation, and the FEDPIPE_* environment and --flag overrides of every key.
//
// Components keep their own Config structs; cmd/fedpipe maps this file onto them.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
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
	Listen              string            `yaml:"listen" doc:"Address of the federation-facing listener serving GET /_matrix/key/v2/server (fedpipe's signing keys, which receivers fetch to verify its transactions) for the stage 'keys'. Empty: do not serve it (the homeserver publishes fedpipe's key itself)."`
	TLSCert             string            `yaml:"tls_cert" doc:"Certificate chain (PEM) for the server name, served on federation.listen. Empty together with tls_key: plain HTTP, for a TLS-terminating proxy in front."`
	TLSKey              string            `yaml:"tls_key" doc:"Private key (PEM) of federation.tls_cert."`
	KeyValidity         time.Duration     `yaml:"key_validity" doc:"How long receivers may cache the published keys: valid_until_ts is now plus this (Synapse: 24h)."`
}

// Default returns the configuration used when a key is not set anywhere.
// Its Instance is empty, which Load makes the host name: a copied file does not
// give every host one name.
func Default() Config {
	return Config{
		ServerName: "localhost",
		DataDir:    "./data",
		LogLevel:   "info",
		Kafka: Kafka{
			EmbeddedPort:       9092,
			TopicPrefix:        "fedpipe",
			Partitions:         16,
			OutboundPartitions: 32,
			ReplicationFactor:  1,
			RebalanceTimeout:   10 * time.Second,
			DrainTimeout:       5 * time.Second,
			StallAfter:         time.Minute,
		},
		Database: Database{EmbeddedPort: 5433, MaxConns: 16},
		Relay:    Relay{PollInterval: 50 * time.Millisecond, BatchSize: 1000},
		Router:   Router{RoomsPerPartition: 10_000, PruneInterval: time.Hour},
		Ingest:   Ingest{Listen: "127.0.0.1:8008", MaxBodyBytes: 16 << 20},
		Presence: Presence{SyncTimeout: 30 * time.Second, IdleTimeout: 5 * time.Minute, PingInterval: 25 * time.Minute,
			InstanceTimeout: 5 * time.Minute, SweepInterval: time.Second},
		Admin: Admin{Listen: "127.0.0.1:9100"},
		Federation: Federation{
			RequestTimeout:      60 * time.Second,
			BackoffInitial:      10 * time.Minute,
			BackoffMax:          7 * 24 * time.Hour,
			KeyValidity:         24 * time.Hour,
			MaxTransactionBytes: 1 << 20,
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

// Validate reports every invalid value, each naming its key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.ServerName == "" {
		bad("server_name", "must be set")
	} else if strings.ContainsAny(c.ServerName, " /\t@!#$") {
		bad("server_name", "%q is not a Matrix server name", c.ServerName)
	}
	if c.DataDir == "" {
		bad("data_dir", "must be set")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "%q is not one of debug, info, warn, error", c.LogLevel)
	}
	for i, b := range c.Kafka.Brokers {
		if _, _, err := net.SplitHostPort(b); err != nil {
			bad(fmt.Sprintf("kafka.brokers[%d]", i), "%q is not host:port", b)
		}
	}
	port := func(key string, p int) {
		if p < 0 || p > 65535 {
			bad(key, "%d is not a port", p)
		}
	}
	port("kafka.embedded_port", c.Kafka.EmbeddedPort)
	port("database.embedded_port", c.Database.EmbeddedPort)
	if c.Kafka.TopicPrefix == "" || strings.ContainsAny(c.Kafka.TopicPrefix, " /\\") {
		bad("kafka.topic_prefix", "%q is not a valid topic prefix", c.Kafka.TopicPrefix)
	}
	positive := func(key string, n int) {
		if n <= 0 {
			bad(key, "must be positive, got %d", n)
		}
	}
	positive("kafka.partitions", c.Kafka.Partitions)
	positive("kafka.outbound_partitions", c.Kafka.OutboundPartitions)
	positive("kafka.replication_factor", c.Kafka.ReplicationFactor)
	positive("database.max_conns", c.Database.MaxConns)
	positive("relay.batch_size", c.Relay.BatchSize)
	positive("router.rooms_per_partition", c.Router.RoomsPerPartition)
	posDur := func(key string, d time.Duration) {
		if d <= 0 {
			bad(key, "must be a positive duration, got %s", d)
		}
	}
	posDur("kafka.rebalance_timeout", c.Kafka.RebalanceTimeout)
	posDur("kafka.drain_timeout", c.Kafka.DrainTimeout)
	if 2*c.Kafka.DrainTimeout > c.Kafka.RebalanceTimeout {
		bad("kafka.drain_timeout", "%s is more than half of kafka.rebalance_timeout (%s): a member still draining would be expired, and another would send to its destinations at the same time", c.Kafka.DrainTimeout, c.Kafka.RebalanceTimeout)
	}
	posDur("relay.poll_interval", c.Relay.PollInterval)
	posDur("router.prune_interval", c.Router.PruneInterval)
	posDur("presence.sync_timeout", c.Presence.SyncTimeout)
	posDur("presence.idle_timeout", c.Presence.IdleTimeout)
	posDur("presence.ping_interval", c.Presence.PingInterval)
	posDur("presence.instance_timeout", c.Presence.InstanceTimeout)
	posDur("presence.sweep_interval", c.Presence.SweepInterval)
	if c.Presence.PingInterval >= 29*time.Minute {
		bad("presence.ping_interval", "%s leaves remote servers (which time users out after 30m) no margin; use 25m or less", c.Presence.PingInterval)
	}
	posDur("federation.request_timeout", c.Federation.RequestTimeout)
	posDur("federation.backoff_initial", c.Federation.BackoffInitial)
	posDur("federation.backoff_max", c.Federation.BackoffMax)
	if c.Federation.BackoffMax < c.Federation.BackoffInitial {
		bad("federation.backoff_max", "%s is shorter than backoff_initial %s", c.Federation.BackoffMax, c.Federation.BackoffInitial)
	}
	if c.Federation.MaxTransactionBytes < 2*65536 {
		bad("federation.max_transaction_bytes", "must be at least 131072 (one 64 KiB PDU or EDU), got %d", c.Federation.MaxTransactionBytes)
	}
	if c.Ingest.MaxBodyBytes <= 0 {
		bad("ingest.max_body_bytes", "must be positive, got %d", c.Ingest.MaxBodyBytes)
	}
	posDur("federation.key_validity", c.Federation.KeyValidity)
	if (c.Federation.TLSCert == "") != (c.Federation.TLSKey == "") {
		bad("federation.tls_cert", "tls_cert and tls_key go together (both empty serves plain HTTP)")
	}
	if c.Federation.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Federation.Listen); err != nil {
			bad("federation.listen", "%q is not host:port", c.Federation.Listen)
		}
	}
	for _, l := range []struct{ name, addr, token string }{{"ingest", c.Ingest.Listen, c.Ingest.Token}, {"admin", c.Admin.Listen, c.Admin.Token}} {
		if l.addr == "" {
			continue
		}
		host, _, err := net.SplitHostPort(l.addr)
		if err != nil {
			bad(l.name+".listen", "%q is not host:port", l.addr)
			continue
		}
		if l.token == "" && !loopbackHost(host) {
			bad(l.name+".token", "must be set when %s.listen (%q) is not a loopback address: without it anyone who reaches the port is trusted", l.name, l.addr)
		}
	}
	for i, n := range c.Federation.AllowedNetworks {
		if _, _, err := net.ParseCIDR(n); err != nil {
			bad(fmt.Sprintf("federation.allowed_networks[%d]", i), "%q is not a CIDR", n)
		}
	}
	for name, addr := range c.Federation.Static {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad("federation.static."+name, "%q is not host:port", addr)
		}
	}
	return errors.Join(errs...)
}

// loopbackHost reports whether a listen address's host accepts connections
// from this machine only: "localhost" or a loopback IP. An empty host (every
// interface) and other names are not.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
