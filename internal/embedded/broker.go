// Package embedded starts fedpipe's single-machine defaults: an in-process
// Kafka-protocol broker (franz-go's kfake) persisted under the data directory,
// and a private PostgreSQL cluster from the installed server binaries.
package embedded

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"syscall"

	"github.com/twmb/franz-go/pkg/kfake"
)

// BrokerConfig configures the embedded broker.
type BrokerConfig struct {
	// DataDir keeps the broker's log and group offsets across restarts.
	DataDir string
	// Port on 127.0.0.1; 0 picks a free one.
	Port int
	// Partitions is the default partition count of auto-created topics (fedpipe creates its own).
	Partitions int
}

// Broker is a running embedded broker.
type Broker struct {
	c    *kfake.Cluster
	addr string
}

// StartBroker starts the broker on 127.0.0.1 only, so it is reachable by kcat
// and other clients on this machine and by nothing else.
func StartBroker(cfg BrokerConfig, logger *slog.Logger) (*Broker, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("embedded broker: a data directory is required")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.Port))
	// Probe the port first for a clear message: kfake's own error is terse.
	if cfg.Port != 0 {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			if errors.Is(err, syscall.EADDRINUSE) {
				return nil, fmt.Errorf("embedded broker: port %d on 127.0.0.1 is taken (set kafka.embedded_port, or kafka.brokers to use a running Kafka)", cfg.Port)
			}
			return nil, fmt.Errorf("embedded broker: %w", err)
		}
		ln.Close()
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.DataDir(cfg.DataDir),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, addr) }),
	}
	if cfg.Partitions > 0 {
		opts = append(opts, kfake.DefaultNumPartitions(cfg.Partitions))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	b := &Broker{c: c, addr: c.ListenAddrs()[0]}
	logger.Info("embedded Kafka broker started", "addr", b.addr, "data_dir", cfg.DataDir)
	return b, nil
}

// Addr is the bootstrap address.
func (b *Broker) Addr() string { return b.addr }

// Close stops the broker, flushing its data directory.
func (b *Broker) Close() { b.c.Close() }
