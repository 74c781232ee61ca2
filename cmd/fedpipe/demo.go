package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/federation/testreceiver"
	"github.com/fedpipe/fedpipe/internal/loadgen"
)

// cmdDemo runs every stage plus simulated remote homeservers on loopback and a
// load generator, prints progress and a per-server report, and fails when any
// expected (event, server) delivery is missing.
func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", "", "Run every stage plus simulated remote homeservers on loopback and a load generator, then report deliveries.", stderr)
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
	log := newLogger(cfg.LogLevel, stderr)

	names := make([]string, *servers)
	for i := range names {
		names[i] = fmt.Sprintf("remote%d.demo", i)
	}
	var recv *testreceiver.Server
	keys := func(origin, keyID string) (ed25519.PublicKey, error) { return nil, errors.New("not started") }
	recv, err = testreceiver.Start(testreceiver.Config{Names: names, Keys: func(origin, keyID string) (ed25519.PublicKey, error) { return keys(origin, keyID) }})
	if err != nil {
		return err
	}
	defer recv.Close()
	// The simulated servers are on loopback and use their own CA: point fedpipe at them.
	cfg.Federation.Static = map[string]string{}
	for _, n := range names {
		cfg.Federation.Static[n] = recv.Addr()
	}
	cfg.Federation.AllowedNetworks = append(cfg.Federation.AllowedNetworks, "127.0.0.0/8")
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return err
	}
	caFile := filepath.Join(cfg.DataDir, "demo-ca.pem")
	if err := os.WriteFile(caFile, recv.CACertPEM(), 0o600); err != nil {
		return err
	}
	cfg.Federation.CAFile = caFile

	in, err := startInfra(ctx, cfg, log, true)
	if err != nil {
		return err
	}
	defer in.Close()
	keys = func(origin, keyID string) (ed25519.PublicKey, error) {
		if origin == cfg.ServerName && keyID == in.key.ID {
			return in.key.Public(), nil
		}
		return nil, fmt.Errorf("unknown key %s of %s", keyID, origin)
	}
	plan, err := loadgen.Generate(loadgen.Config{LocalServer: cfg.ServerName, RemoteServers: names, Rooms: *rooms, Events: *events, ServersPerRoom: min(3, *servers), Seed: uint64(time.Now().UnixNano())})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "demo: %d rooms, %d remote servers, %d events, %d (event, server) deliveries expected\n", *rooms, *servers, len(plan.Events), plan.Expected)

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	g, gctx := errgroup.WithContext(runCtx)
	if err := in.startStages(gctx, g, []string{"relay", "router", "sender"}, nil); err != nil {
		return err
	}
	var report loadgen.Report
	g.Go(func() error {
		defer stop()
		start := time.Now()
		if _, err := plan.Ingest(gctx, loadgen.PoolPersister(in.pool), 200, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "demo: persisted %d events in %s\n", len(plan.Events), time.Since(start).Round(time.Millisecond))
		deadline := time.Now().Add(*timeout)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			report = plan.Check(recv.PDUs, -1)
			done := report.Totals().Delivered
			if done == plan.Expected {
				fmt.Fprintf(stdout, "demo: all %d deliveries in %s\n", done, time.Since(start).Round(time.Millisecond))
				return nil
			}
			if time.Now().After(deadline) {
				return nil
			}
			select {
			case <-gctx.Done():
				return nil
			case <-tick.C:
				fmt.Fprintf(stdout, "demo: %d/%d delivered (%.0f%%)\n", done, plan.Expected, 100*float64(done)/float64(max(plan.Expected, 1)))
			}
		}
	})
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	report.Print(stdout)
	if !report.OK() {
		return fmt.Errorf("demo: %d expected deliveries missing, %d unexpected, %d out of order", report.Totals().Missing, report.Totals().Unexpected, report.Totals().OutOfOrder)
	}
	return nil
}
