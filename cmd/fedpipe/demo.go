package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/federation/testreceiver"
	"github.com/fedpipe/fedpipe/internal/config"
	"github.com/fedpipe/fedpipe/internal/testing/loadgen"
	"github.com/fedpipe/fedpipe/producers/ingest"
)

// cmdDemo runs every stage plus simulated remote homeservers on loopback and a
// load generator that goes through the ingest API (events, then presence),
// prints progress and a per-server report, and fails when any expected
// delivery is missing or anything unexpected, out of order or unknown arrives.
func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", "", "Run every stage but keys, plus simulated remote homeservers on loopback and a load generator, then report deliveries.", stderr)
	path := configFlags(fs)
	rooms := fs.Int("rooms", 20, "rooms to create")
	servers := fs.Int("servers", 5, "simulated remote homeservers")
	events := fs.Int("events", 2000, "events after the initial joins")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait for every delivery")
	cfg, err := loadConfig(fs, path, args)
	if err != nil {
		return err
	}
	if *rooms <= 0 || *servers <= 0 || *events < 0 {
		return errors.New("demo: --rooms and --servers must be positive, --events not negative")
	}
	cleanup, err := demoPlace(&cfg, "demo", stdout)
	if err != nil {
		return err
	}
	defer cleanup()
	d, err := startDemo(ctx, cfg, *servers, newLogger(cfg.LogLevel, stderr))
	if err != nil {
		return err
	}
	defer d.close()
	var run [4]byte
	_, _ = rand.Read(run[:])
	plan, err := loadgen.Generate(loadgen.Config{LocalServer: cfg.ServerName, RemoteServers: d.recv.Names(), Rooms: *rooms, Events: *events,
		ServersPerRoom: min(3, *servers), Seed: uint64(time.Now().UnixNano()), RunID: hex.EncodeToString(run[:])})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "demo: %d rooms, %d remote servers, %d events, %d (event, server) deliveries expected\n", *rooms, *servers, len(plan.Events), plan.Expected)
	return d.run(ctx, plan, *timeout, stdout)
}

// demoPlace gives the demo (or bench: name) a directory and ports of its own unless the
// configuration names them: a temporary directory (removed afterwards) for
// the default data_dir, and free ports for the default embedded and listener
// ports, so the demo runs beside `fedpipe run` and twice in a row.
func demoPlace(cfg *config.Config, name string, stdout io.Writer) (cleanup func(), err error) {
	def := config.Default()
	cleanup = func() {}
	if cfg.DataDir == def.DataDir {
		dir, err := os.MkdirTemp("", "fedpipe-"+name+"-")
		if err != nil {
			return nil, err
		}
		cfg.DataDir = dir
		cleanup = func() { _ = os.RemoveAll(dir) }
		if err := os.Chmod(dir, 0o755); err != nil { // the private cluster runs as postgres when we are root
			cleanup()
			return nil, err
		}
		fmt.Fprintf(stdout, "%s: data in %s (removed at the end; --data_dir keeps it)\n", name, dir)
	}
	if cfg.Kafka.EmbeddedPort == def.Kafka.EmbeddedPort {
		cfg.Kafka.EmbeddedPort = 0
	}
	if cfg.Database.EmbeddedPort == def.Database.EmbeddedPort {
		cfg.Database.EmbeddedPort = 0
	}
	if cfg.Ingest.Listen == def.Ingest.Listen || cfg.Ingest.Listen == "" { // the load goes through it
		cfg.Ingest.Listen = "127.0.0.1:0"
	}
	if cfg.Admin.Listen == def.Admin.Listen {
		cfg.Admin.Listen = "127.0.0.1:0"
	}
	return cleanup, nil
}

// demo is a running pipeline with its simulated remote servers.
type demo struct {
	cfg  config.Config
	recv *testreceiver.Server
	in   *infra
}

// startDemo starts the simulated remote servers and the pipeline's
// infrastructure, with fedpipe pointed at the servers (loopback, their CA).
func startDemo(ctx context.Context, cfg config.Config, servers int, log *slog.Logger) (*demo, error) {
	names := make([]string, servers)
	for i := range names {
		names[i] = fmt.Sprintf("remote%d.demo", i)
	}
	d := &demo{}
	recv, err := testreceiver.Start(testreceiver.Config{Names: names, Keys: func(origin, keyID string) (ed25519.PublicKey, error) {
		if d.in != nil && origin == d.cfg.ServerName && keyID == d.in.key.ID {
			return d.in.key.Public(), nil
		}
		return nil, fmt.Errorf("unknown key %s of %s", keyID, origin)
	}})
	if err != nil {
		return nil, err
	}
	d.recv = recv
	cfg.Federation.Static = map[string]string{}
	for _, n := range names {
		cfg.Federation.Static[n] = recv.Addr()
	}
	cfg.Federation.AllowedNetworks = append(cfg.Federation.AllowedNetworks, "127.0.0.0/8")
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		recv.Close()
		return nil, err
	}
	cfg.Federation.CAFile = filepath.Join(cfg.DataDir, "demo-ca.pem")
	if err := os.WriteFile(cfg.Federation.CAFile, recv.CACertPEM(), 0o600); err != nil {
		recv.Close()
		return nil, err
	}
	d.cfg = cfg
	in, err := startInfra(ctx, cfg, log, true)
	if err != nil {
		recv.Close()
		return nil, err
	}
	d.in = in
	return d, nil
}

func (d *demo) close() {
	_ = d.in.Close()
	_ = d.recv.Close()
}

// run starts every stage, sends the plan's events and then its local users'
// presence through the ingest API, and reports what arrived.
func (d *demo) run(ctx context.Context, plan *loadgen.Plan, timeout time.Duration, stdout io.Writer) error {
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	g, gctx := errgroup.WithContext(runCtx)
	if err := d.in.startStages(gctx, g, []string{"relay", "presence", "router", "sender", "ingest"}, nil); err != nil {
		return err
	}
	base := "http://" + d.in.listeners["ingest"]
	var report loadgen.Report
	var told presenceReport
	g.Go(func() error {
		defer stop()
		start := time.Now()
		persist := loadgen.HTTPPersister(http.DefaultClient, base+ingest.Path, d.cfg.Ingest.Token)
		if _, err := plan.Ingest(gctx, persist, 200, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "demo: ingested %d events in %s\n", len(plan.Events), time.Since(start).Round(time.Millisecond))
		deadline := time.Now().Add(timeout)
		report = d.waitEvents(gctx, plan, start, deadline, stdout)
		var err error
		told, err = d.presence(gctx, plan, base, deadline, stdout)
		return err
	})
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	report.Print(stdout)
	told.print(stdout)
	if !report.OK() || !told.ok() {
		t := report.Totals()
		return fmt.Errorf("demo: events: %d missing, %d unexpected, %d out of order, %d unknown; presence: %d missing, %d unexpected",
			t.Missing, t.Unexpected, t.OutOfOrder, t.Unknown, told.missing, told.unexpected)
	}
	return nil
}

// waitEvents waits until every planned delivery has arrived or the deadline
// passes, printing progress every second.
func (d *demo) waitEvents(ctx context.Context, plan *loadgen.Plan, start, deadline time.Time, stdout io.Writer) loadgen.Report {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		report := plan.Check(d.recv.PDUs, -1)
		done := report.Totals().Delivered
		if done == plan.Expected {
			fmt.Fprintf(stdout, "demo: all %d deliveries in %s\n", done, time.Since(start).Round(time.Millisecond))
			return report
		}
		if time.Now().After(deadline) {
			return report
		}
		select {
		case <-ctx.Done():
			return report
		case <-tick.C:
			fmt.Fprintf(stdout, "demo: %d/%d delivered (%.0f%%)\n", done, plan.Expected, 100*float64(done)/float64(max(plan.Expected, 1)))
		}
	}
}
