package config

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/fedpipe/fedpipe/federation/txn"
)

// Validate reports every invalid value, each naming its key.
func (c *Config) Validate() error {
	var p problems
	c.validateProcess(&p)
	c.Kafka.validate(&p)
	c.Database.validate(&p)
	c.Relay.validate(&p)
	c.Ingest.validate(&p)
	c.Router.validate(&p)
	c.Presence.validate(&p)
	c.Admin.validate(&p)
	c.Federation.validate(&p)
	return errors.Join(p.errs...)
}

// validateProcess checks the top-level keys.
func (c *Config) validateProcess(p *problems) {
	if c.ServerName == "" {
		p.bad("server_name", "must be set")
	} else if strings.ContainsAny(c.ServerName, " /\t@!#$") {
		p.bad("server_name", "%q is not a Matrix server name", c.ServerName)
	}
	if c.DataDir == "" {
		p.bad("data_dir", "must be set")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		p.bad("log_level", "%q is not one of debug, info, warn, error", c.LogLevel)
	}
}

func (k *Kafka) validate(p *problems) {
	for i, b := range k.Brokers {
		p.hostPort(fmt.Sprintf("kafka.brokers[%d]", i), b)
	}
	p.port("kafka.embedded_port", k.EmbeddedPort)
	if k.TopicPrefix == "" || strings.ContainsAny(k.TopicPrefix, " /\\") {
		p.bad("kafka.topic_prefix", "%q is not a valid topic prefix", k.TopicPrefix)
	}
	p.positive("kafka.partitions", k.Partitions)
	p.positive("kafka.outbound_partitions", k.OutboundPartitions)
	p.positive("kafka.replication_factor", k.ReplicationFactor)
	p.positiveDuration("kafka.rebalance_timeout", k.RebalanceTimeout)
	p.positiveDuration("kafka.drain_timeout", k.DrainTimeout)
	if 2*k.DrainTimeout > k.RebalanceTimeout {
		p.bad("kafka.drain_timeout", "%s is more than half of kafka.rebalance_timeout (%s): a member still draining would be expired, and another would send to its destinations at the same time", k.DrainTimeout, k.RebalanceTimeout)
	}
}

func (d *Database) validate(p *problems) {
	p.port("database.embedded_port", d.EmbeddedPort)
	p.positive("database.max_conns", d.MaxConns)
}

func (r *Relay) validate(p *problems) {
	p.positive("relay.batch_size", r.BatchSize)
	p.positiveDuration("relay.poll_interval", r.PollInterval)
}

func (i *Ingest) validate(p *problems) {
	if i.MaxBodyBytes <= 0 {
		p.bad("ingest.max_body_bytes", "must be positive, got %d", i.MaxBodyBytes)
	}
	p.listener("ingest", i.Listen, i.Token)
}

func (r *Router) validate(p *problems) {
	p.positive("router.rooms_per_partition", r.RoomsPerPartition)
	p.positiveDuration("router.prune_interval", r.PruneInterval)
}

func (pr *Presence) validate(p *problems) {
	p.positiveDuration("presence.sync_timeout", pr.SyncTimeout)
	p.positiveDuration("presence.idle_timeout", pr.IdleTimeout)
	p.positiveDuration("presence.ping_interval", pr.PingInterval)
	p.positiveDuration("presence.instance_timeout", pr.InstanceTimeout)
	p.positiveDuration("presence.sweep_interval", pr.SweepInterval)
	if pr.PingInterval >= 29*time.Minute {
		p.bad("presence.ping_interval", "%s leaves remote servers (which time users out after 30m) no margin; use 25m or less", pr.PingInterval)
	}
}

func (a *Admin) validate(p *problems) {
	p.listener("admin", a.Listen, a.Token)
}

func (f *Federation) validate(p *problems) {
	p.positiveDuration("federation.request_timeout", f.RequestTimeout)
	p.positiveDuration("federation.backoff_initial", f.BackoffInitial)
	p.positiveDuration("federation.backoff_max", f.BackoffMax)
	if f.BackoffMax < f.BackoffInitial {
		p.bad("federation.backoff_max", "%s is shorter than backoff_initial %s", f.BackoffMax, f.BackoffInitial)
	}
	if f.MaxTransactionBytes < txn.MinBudget {
		p.bad("federation.max_transaction_bytes", "must be at least %d (one 64 KiB PDU or EDU), got %d", txn.MinBudget, f.MaxTransactionBytes)
	}
	p.positiveDuration("federation.key_validity", f.KeyValidity)
	if f.Linger < 0 || f.Linger > time.Second {
		p.bad("federation.linger", "must be between 0 and 1s, got %s", f.Linger)
	}
	if (f.TLSCert == "") != (f.TLSKey == "") {
		p.bad("federation.tls_cert", "tls_cert and tls_key go together (both empty serves plain HTTP)")
	}
	if f.Listen != "" {
		p.hostPort("federation.listen", f.Listen)
	}
	for i, n := range f.AllowedNetworks {
		if _, _, err := net.ParseCIDR(n); err != nil {
			p.bad(fmt.Sprintf("federation.allowed_networks[%d]", i), "%q is not a CIDR", n)
		}
	}
	for name, addr := range f.Static {
		p.hostPort("federation.static."+name, addr)
	}
}

// problems collects what Validate finds, each error naming its key.
type problems struct{ errs []error }

func (p *problems) bad(key, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
}

func (p *problems) port(key string, n int) {
	if n < 0 || n > 65535 {
		p.bad(key, "%d is not a port", n)
	}
}

func (p *problems) positive(key string, n int) {
	if n <= 0 {
		p.bad(key, "must be positive, got %d", n)
	}
}

func (p *problems) positiveDuration(key string, d time.Duration) {
	if d <= 0 {
		p.bad(key, "must be a positive duration, got %s", d)
	}
}

// hostPort reports addr unless it is host:port; it returns the host.
func (p *problems) hostPort(key, addr string) (host string, ok bool) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		p.bad(key, "%q is not host:port", addr)
		return "", false
	}
	return host, true
}

// listener checks an HTTP listener's address and that it has a token unless
// it listens on loopback only: without one, anyone who reaches the port is trusted.
func (p *problems) listener(section, addr, token string) {
	if addr == "" {
		return
	}
	host, ok := p.hostPort(section+".listen", addr)
	if ok && token == "" && !loopbackHost(host) {
		p.bad(section+".token", "must be set when %s.listen (%q) is not a loopback address: without it anyone who reaches the port is trusted", section, addr)
	}
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
