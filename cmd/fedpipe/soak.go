package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/federation/signing"
	"github.com/fedpipe/fedpipe/federation/testreceiver"
	"github.com/fedpipe/fedpipe/internal/testing/loadgen"
)

// soakConfig shapes a crash soak (see cmdSoak).
type soakConfig struct {
	dir                    string
	keep                   bool
	seed                   uint64
	kills                  int
	rooms, servers, events int
	stallBound             time.Duration
	drain                  time.Duration
	progress               time.Duration
	logLevel               string
	bin                    string
	// brokers, when set, is a Kafka cluster of the operator's (Apache Kafka)
	// instead of the embedded broker; brokerRestart is the shell command that
	// restarts its broker process once mid-run (scripts/kafka restart).
	brokers, brokerRestart string
}

// cmdSoak runs the crash soak: the embedded broker and PostgreSQL with the
// ingest and relay stages in one fedpipe process, presence, router and sender
// in another; a scripted load through the ingest API to simulated remote
// servers; the stage process SIGKILLed and restarted at random intervals,
// PostgreSQL restarted once and the infrastructure process (broker) once. It
// fails when an expected (event, server) delivery is missing, something
// unexpected arrived, or no delivery was made for longer than --stall_bound
// while some were outstanding.
func cmdSoak(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("soak", "", "Crash soak: SIGKILL and restart the stage process under load through the ingest API, restart PostgreSQL and the broker process once, and check every delivery.", stderr)
	var c soakConfig
	fs.StringVar(&c.dir, "dir", "", "work directory (data of both processes, their logs); default: a new one under the system temp dir")
	fs.BoolVar(&c.keep, "keep", false, "keep the work directory after a passing run (a failing run always keeps it)")
	fs.Uint64Var(&c.seed, "seed", 0, "seed of the load and the kill schedule; 0 picks one (printed, to repeat a run)")
	fs.IntVar(&c.kills, "kills", 30, "SIGKILLs of the stage process")
	fs.IntVar(&c.rooms, "rooms", 100, "rooms of the load")
	fs.IntVar(&c.servers, "servers", 8, "simulated remote homeservers")
	fs.IntVar(&c.events, "events", 20000, "events after the initial joins, spread over the kill schedule")
	fs.DurationVar(&c.stallBound, "stall_bound", 40*time.Second, "longest acceptable time without a new delivery while some are outstanding (default: the group session timeout, 10 s, + 30 s)")
	fs.DurationVar(&c.drain, "drain", 5*time.Minute, "how long to wait for the last deliveries after the last kill")
	fs.DurationVar(&c.progress, "progress", 10*time.Second, "interval of the progress lines")
	fs.StringVar(&c.logLevel, "log_level", "info", "log level of the fedpipe processes (their logs are in the work directory)")
	fs.StringVar(&c.bin, "bin", "", "fedpipe binary to run the processes with; default: this one")
	fs.StringVar(&c.brokers, "brokers", "", "Kafka `brokers` to run on instead of the embedded broker (topics get a prefix of their own)")
	fs.StringVar(&c.brokerRestart, "broker_restart", "", "shell `command` that restarts the broker process of --brokers once mid-run (e.g. scripts/kafka restart)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("soak: unexpected arguments %v", fs.Args())
	}
	if c.kills < 0 || c.rooms <= 0 || c.servers <= 0 || c.events < 0 || c.stallBound <= 0 || c.drain <= 0 || c.progress <= 0 {
		return errors.New("soak: --kills and --events must not be negative; --rooms, --servers, --stall_bound, --drain and --progress must be positive")
	}
	if c.seed == 0 {
		c.seed = uint64(time.Now().UnixNano())
	}
	if (c.brokers == "") != (c.brokerRestart == "") {
		return errors.New("soak: --brokers and --broker_restart go together (the soak restarts the broker process once)")
	}
	if c.bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("soak: finding this binary (set --bin): %w", err)
		}
		c.bin = exe
	}
	s := &soak{cfg: c, out: stdout}
	return s.run(ctx)
}

// soak is one run of the crash soak.
type soak struct {
	cfg  soakConfig
	out  io.Writer
	dir  string
	recv *testreceiver.Server
	plan *loadgen.Plan

	infra, stages         *soakProc
	ingestURL, metricsURL string
	pgDir                 string
	pgPort                int
	infraAddrs            []string // the broker and the ingest API

	mu                  sync.Mutex // guards the fields below and out
	watch               *progressWatch
	kills, selfExits    int
	pgRestarts, brokers int
	ingested            atomic.Int64
}

func (s *soak) printf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.out, "soak: "+format+"\n", args...)
}

func (s *soak) run(ctx context.Context) (err error) {
	c := s.cfg
	started := time.Now()
	if err := s.setup(); err != nil {
		return err
	}
	defer func() {
		s.stop()
		if err != nil || c.keep {
			s.printf("work directory kept: %s (infra.log, stages.log)", s.dir)
		} else {
			_ = os.RemoveAll(s.dir)
		}
	}()
	gaps := killGaps(c.seed, c.kills)
	schedule := s.announce(gaps)
	if err := s.startProcs(ctx); err != nil {
		return err
	}
	drained, err := s.load(ctx, gaps, schedule)
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// Stragglers: duplicates still in flight when the last expected delivery arrived.
	time.Sleep(2 * time.Second)
	return s.report(ctx, started, drained)
}

// announce prints the run's shape: the seed, the load, the kill schedule and
// the work directory. It returns how long the kill schedule lasts.
func (s *soak) announce(gaps []time.Duration) (schedule time.Duration) {
	c := s.cfg
	short := 0
	for _, g := range gaps {
		schedule += g
		if g < 5*time.Second {
			short++
		}
	}
	s.printf("seed %d (repeat with --seed=%d); %d rooms, %d remote servers, %d events, %d (event, server) deliveries expected",
		c.seed, c.seed, c.rooms, c.servers, len(s.plan.Events), s.plan.Expected)
	s.printf("%d SIGKILLs of the stage process over about %s (%d under 5 s after the previous start), PostgreSQL restarted after kill %d, the broker process after kill %d; stall bound %s",
		c.kills, schedule.Round(time.Second), short, c.kills/3, 2*c.kills/3, c.stallBound)
	s.printf("work directory %s", s.dir)
	return schedule
}

// startProcs starts the infrastructure process, waits for it to serve, then
// starts the stage process; progress is watched from then on.
func (s *soak) startProcs(ctx context.Context) error {
	if err := s.infra.start(); err != nil {
		return err
	}
	if err := s.waitInfra(ctx); err != nil {
		return err
	}
	if err := s.stages.start(); err != nil {
		return err
	}
	s.watch = newProgressWatch(time.Now())
	return nil
}

// load runs the ingest of the load over schedule, the progress monitor and the
// kill loop together; after the last kill and the last ingested event it waits
// for the deliveries to drain, and reports whether they did.
func (s *soak) load(ctx context.Context, gaps []time.Duration, schedule time.Duration) (drained bool, err error) {
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(runCtx)
	ingestDone := make(chan struct{})
	g.Go(func() error { defer close(ingestDone); return s.ingest(gctx, schedule) })
	g.Go(func() error { return s.monitor(gctx) })
	g.Go(func() error {
		defer cancel()
		if err := s.killLoop(gctx, gaps); err != nil {
			return err
		}
		select {
		case <-ingestDone:
		case <-gctx.Done():
			return nil
		}
		drained = s.drain(gctx)
		return nil
	})
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return false, err
	}
	return drained, nil
}

// report checks the deliveries against the plan, prints the figures of the run
// and returns its verdict.
func (s *soak) report(ctx context.Context, started time.Time, drained bool) error {
	c := s.cfg
	rep := s.plan.Check(s.recv.PDUs, -1)
	s.mu.Lock()
	rep.Print(s.out)
	s.mu.Unlock()
	t := rep.Totals()
	s.printf("command: fedpipe soak --seed=%d --kills=%d --rooms=%d --servers=%d --events=%d --stall_bound=%s", c.seed, c.kills, c.rooms, c.servers, c.events, c.stallBound)
	s.printf("kills %d, PostgreSQL restarts %d, broker process restarts %d, stage process exits on its own %d", s.kills, s.pgRestarts, s.brokers, s.selfExits)
	s.printf("expected %d, delivered %d, missing %d, unexpected %d, unknown %d, out of order %d, duplicates %d (%.1f%%), concurrent-transaction rejections %d",
		t.Expected, t.Delivered, t.Missing, t.Unexpected, t.Unknown, t.OutOfOrder, t.Duplicates, 100*float64(t.Duplicates)/float64(max(t.Expected, 1)), s.recv.ConcurrentRejections())
	s.printf("longest time without progress %s (ended %s into the run; bound %s); wall time %s",
		s.watch.longest.Round(100*time.Millisecond), s.watch.longestAt.Round(time.Second), c.stallBound, time.Since(started).Round(time.Second))
	if st := stalledPartitions(ctx, s.metricsURL); st != "" {
		s.printf("stage process reports stalled partitions: %s", st)
	}
	if err := soakVerdict(rep, drained, s.watch.longest, c.stallBound); err != nil {
		return err
	}
	s.printf("PASS")
	return nil
}

// soakLocal is the server name of the fedpipe under soak.
const soakLocal = "soak.local"

// setup prepares the work directory, the signing key, the simulated remote
// servers, the load and both processes' configurations.
func (s *soak) setup() error {
	c := s.cfg
	dir, err := soakWorkDir(c.dir)
	if err != nil {
		return err
	}
	s.dir = dir
	keyPath := filepath.Join(dir, "signing.key")
	key, err := signing.WriteNewKeyFile(keyPath)
	if err != nil {
		return fmt.Errorf("soak: %w (use an empty --dir)", err)
	}
	names := make([]string, c.servers)
	for i := range names {
		names[i] = fmt.Sprintf("remote%d.soak", i)
	}
	caFile, err := s.startRemotes(names, key)
	if err != nil {
		return err
	}
	s.plan, err = loadgen.Generate(loadgen.Config{LocalServer: soakLocal, RemoteServers: names, Rooms: c.rooms, Events: c.events, ServersPerRoom: min(3, c.servers), Seed: c.seed})
	if err != nil {
		return err
	}
	return s.configureProcs(names, keyPath, caFile)
}

// soakWorkDir makes the work directory, a new one under the system temp dir
// when dir is empty.
func soakWorkDir(dir string) (string, error) {
	if dir == "" {
		d, err := os.MkdirTemp("", "fedpipe-soak-")
		if err != nil {
			return "", err
		}
		dir = d
	}
	// PostgreSQL runs as its own account and must enter the directory.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	return dir, nil
}

// startRemotes starts the simulated remote servers, which trust only key of
// soakLocal, and writes their CA certificate into the work directory for the
// stage process; it returns that file's path.
func (s *soak) startRemotes(names []string, key *signing.Key) (caFile string, err error) {
	s.recv, err = testreceiver.Start(testreceiver.Config{Names: names, Keys: func(origin, keyID string) (ed25519.PublicKey, error) {
		if origin == soakLocal && keyID == key.ID {
			return key.Public(), nil
		}
		return nil, fmt.Errorf("unknown key %s of %s", keyID, origin)
	}})
	if err != nil {
		return "", err
	}
	caFile = filepath.Join(s.dir, "remotes-ca.pem")
	if err := os.WriteFile(caFile, s.recv.CACertPEM(), 0o644); err != nil {
		return "", err
	}
	return caFile, nil
}

// soakPorts are the loopback ports of one run.
type soakPorts struct {
	kafka, pg, ingest, infraAdmin, stageAdmin int
}

// configureProcs picks free ports and configures both processes: the
// infrastructure process (embedded broker and PostgreSQL, ingest and relay)
// and the stage process (presence, router and sender).
func (s *soak) configureProcs(names []string, keyPath, caFile string) error {
	c := s.cfg
	free, err := freePorts(5)
	if err != nil {
		return err
	}
	p := soakPorts{kafka: free[0], pg: free[1], ingest: free[2], infraAdmin: free[3], stageAdmin: free[4]}
	s.ingestURL = fmt.Sprintf("http://127.0.0.1:%d/_fedpipe/v1/events", p.ingest)
	s.metricsURL = fmt.Sprintf("http://127.0.0.1:%d/metrics", p.stageAdmin)
	s.pgDir, s.pgPort = filepath.Join(s.dir, "infra", "postgres"), p.pg
	stallAfter := (c.stallBound * 3 / 4).String()
	common := []string{"FEDPIPE_SERVER_NAME=" + soakLocal, "FEDPIPE_LOG_LEVEL=" + c.logLevel, "FEDPIPE_KAFKA_STALL_AFTER=" + stallAfter}
	brokers := fmt.Sprintf("127.0.0.1:%d", p.kafka)
	if c.brokers != "" {
		brokers = c.brokers
		common = append(common, fmt.Sprintf("FEDPIPE_KAFKA_TOPIC_PREFIX=soak%x", c.seed&0xffffff))
	}
	s.infra = &soakProc{name: "infra", bin: c.bin, args: []string{"run", "--stages=ingest,relay"}, logPath: filepath.Join(s.dir, "infra.log"),
		env: childEnv(append(common, s.infraEnv(p)...)...)}
	s.stages = &soakProc{name: "stages", bin: c.bin, args: []string{"run", "--stages=presence,router,sender"}, logPath: filepath.Join(s.dir, "stages.log"),
		env: childEnv(append(common, s.stagesEnv(names, p, brokers, keyPath, caFile)...)...)}
	s.infraAddrs = []string{fmt.Sprintf("127.0.0.1:%d", p.ingest)}
	if c.brokers == "" {
		s.infraAddrs = append(s.infraAddrs, brokers)
	}
	return nil
}

// infraEnv is the infrastructure process's own configuration: the embedded
// broker (unused with --brokers) and PostgreSQL, the ingest API and admin.
func (s *soak) infraEnv(p soakPorts) []string {
	return []string{
		"FEDPIPE_INSTANCE=soak-infra",
		"FEDPIPE_DATA_DIR=" + filepath.Join(s.dir, "infra"),
		"FEDPIPE_KAFKA_BROKERS=" + s.cfg.brokers,
		fmt.Sprintf("FEDPIPE_KAFKA_EMBEDDED_PORT=%d", p.kafka),
		"FEDPIPE_DATABASE_URL=",
		fmt.Sprintf("FEDPIPE_DATABASE_EMBEDDED_PORT=%d", p.pg),
		fmt.Sprintf("FEDPIPE_INGEST_LISTEN=127.0.0.1:%d", p.ingest),
		fmt.Sprintf("FEDPIPE_ADMIN_LISTEN=127.0.0.1:%d", p.infraAdmin),
	}
}

// stagesEnv is the stage process's own configuration: its key, the broker,
// the infrastructure process's PostgreSQL, and the remote servers all at the
// test receiver's address, trusted through its CA.
func (s *soak) stagesEnv(names []string, p soakPorts, brokers, keyPath, caFile string) []string {
	static := make([]string, 0, len(names))
	for _, n := range names {
		static = append(static, n+"="+s.recv.Addr())
	}
	return []string{
		"FEDPIPE_INSTANCE=soak-stages",
		"FEDPIPE_DATA_DIR=" + filepath.Join(s.dir, "stages"),
		"FEDPIPE_SIGNING_KEY_PATH=" + keyPath,
		"FEDPIPE_KAFKA_BROKERS=" + brokers,
		fmt.Sprintf("FEDPIPE_DATABASE_URL=postgres://postgres@127.0.0.1:%d/fedpipe?sslmode=disable", p.pg),
		"FEDPIPE_FEDERATION_STATIC=" + strings.Join(static, ","),
		"FEDPIPE_FEDERATION_CA_FILE=" + caFile,
		"FEDPIPE_FEDERATION_ALLOWED_NETWORKS=127.0.0.0/8",
		"FEDPIPE_INGEST_LISTEN=",
		fmt.Sprintf("FEDPIPE_ADMIN_LISTEN=127.0.0.1:%d", p.stageAdmin),
	}
}

// waitInfra waits until the infrastructure process serves the broker and the
// ingest API (the ingest listener opens after migrations and topics).
func (s *soak) waitInfra(ctx context.Context) error {
	return s.infra.waitListening(ctx, 3*time.Minute, s.infraAddrs...)
}

// stop ends both processes and the private PostgreSQL cluster.
func (s *soak) stop() {
	if s.stages != nil {
		s.stages.terminate(30 * time.Second)
	}
	if s.infra != nil {
		s.infra.terminate(60 * time.Second)
	}
	if s.pgDir != "" {
		if err := stopLeftoverPostgres(context.Background(), s.pgDir); err != nil {
			s.printf("stopping the private PostgreSQL: %v", err)
		}
	}
	if s.recv != nil {
		_ = s.recv.Close()
	}
}

// ingest posts the load's events through the ingest API in batches spread
// over d, retrying a batch until it is accepted (a retried batch is
// idempotent: the ingest API answers it as the first time).
func (s *soak) ingest(ctx context.Context, d time.Duration) error {
	const batch = 50
	persist := loadgen.HTTPPersister(&http.Client{Timeout: 30 * time.Second}, s.ingestURL, "")
	evs := s.plan.Events
	batches := (len(evs) + batch - 1) / batch
	start := time.Now()
	for i := 0; i < batches; i++ {
		at := start.Add(d * time.Duration(i) / time.Duration(max(batches, 1)))
		if err := sleepUntil(ctx, at); err != nil {
			return nil
		}
		b := evs[i*batch : min((i+1)*batch, len(evs))]
		failing := time.Time{}
		for {
			err := persist(ctx, b)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			if failing.IsZero() {
				failing = time.Now()
				s.printf("ingest refused a batch, retrying: %v", err)
			}
			if time.Since(failing) > 5*time.Minute {
				return fmt.Errorf("soak: the ingest API refused events %d-%d for 5 minutes: %w", b[0].Seq, b[len(b)-1].Seq, err)
			}
			if err := sleepUntil(ctx, time.Now().Add(500*time.Millisecond)); err != nil {
				return nil
			}
		}
		if !failing.IsZero() {
			s.printf("ingest accepted again after %s", time.Since(failing).Round(100*time.Millisecond))
		}
		s.ingested.Store(int64(b[len(b)-1].Seq + 1))
	}
	s.printf("ingested all %d events in %s", len(evs), time.Since(start).Round(time.Second))
	return nil
}

// monitor checks deliveries every second and prints a progress line every
// --progress; when a stall passes the bound it prints what the stage process
// says about its partitions.
func (s *soak) monitor(ctx context.Context) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastLine := time.Now()
	reported := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-tick.C:
			rep := s.plan.Check(s.recv.PDUs, int(s.ingested.Load()))
			s.mu.Lock()
			s.watch.observe(now, rep)
			stall, longest, kills := s.watch.stall(now), s.watch.longest, s.kills
			s.mu.Unlock()
			t := rep.Totals()
			if stall > s.cfg.stallBound && !reported {
				reported = true
				s.printf("STALL: no delivery for %s with %d outstanding; stage process stalled partitions: %q", stall.Round(time.Second), t.Expected-t.Delivered, stalledPartitions(ctx, s.metricsURL))
			}
			if stall == 0 {
				reported = false
			}
			if now.Sub(lastLine) >= s.cfg.progress {
				lastLine = now
				s.printf("%s: kills %d/%d, ingested %d/%d events, delivered %d/%d (outstanding %d), duplicates %d, no progress for %s, longest %s",
					now.Sub(s.watch.start).Round(time.Second), kills, s.cfg.kills, s.ingested.Load(), len(s.plan.Events), t.Delivered, s.plan.Expected,
					t.Expected-t.Delivered, t.Duplicates, stall.Round(time.Second), longest.Round(time.Second))
			}
		}
	}
}

// killLoop SIGKILLs and restarts the stage process on the schedule, restarts
// PostgreSQL after a third of the kills and the infrastructure process after
// two thirds (both while the stage process runs).
func (s *soak) killLoop(ctx context.Context, gaps []time.Duration) error {
	pgAt, brokerAt := len(gaps)/3, 2*len(gaps)/3
	born := time.Now()
	for i, gap := range gaps {
		if err := s.supervise(ctx, born.Add(gap)); err != nil {
			return err
		}
		lived := time.Since(born)
		s.stages.kill()
		if err := s.stages.start(); err != nil {
			return err
		}
		born = time.Now()
		s.mu.Lock()
		s.kills++
		s.mu.Unlock()
		s.printf("SIGKILL %d/%d of the stage process after %s; restarted", i+1, len(gaps), lived.Round(100*time.Millisecond))
		if i+1 == pgAt || i+1 == brokerAt {
			// Let the new stage process get going, then pull the ground from under it.
			if err := s.supervise(ctx, time.Now().Add(min(gaps[min(i+1, len(gaps)-1)]/2, 5*time.Second))); err != nil {
				return err
			}
		}
		if i+1 == pgAt {
			t0 := time.Now()
			if err := s.restartPostgres(ctx); err != nil {
				return err
			}
			s.mu.Lock()
			s.pgRestarts++
			s.mu.Unlock()
			s.printf("PostgreSQL restarted (pg_ctl stop -m fast, start) in %s", time.Since(t0).Round(100*time.Millisecond))
		}
		if i+1 == brokerAt && s.cfg.brokerRestart != "" {
			t0 := time.Now()
			out, err := exec.CommandContext(ctx, "sh", "-c", s.cfg.brokerRestart).CombinedOutput()
			if err != nil {
				return fmt.Errorf("soak: restarting the broker (%s): %w\n%s", s.cfg.brokerRestart, err, out)
			}
			s.mu.Lock()
			s.brokers++
			s.mu.Unlock()
			s.printf("broker process restarted (%s) in %s", s.cfg.brokerRestart, time.Since(t0).Round(100*time.Millisecond))
		} else if i+1 == brokerAt {
			t0 := time.Now()
			if !s.infra.terminate(60 * time.Second) {
				s.printf("the infra process did not stop within 60 s of SIGTERM: killed")
			}
			if err := stopLeftoverPostgres(ctx, s.pgDir); err != nil {
				return fmt.Errorf("soak: %w", err)
			}
			if err := s.infra.start(); err != nil {
				return err
			}
			if err := s.waitInfra(ctx); err != nil {
				return err
			}
			s.mu.Lock()
			s.brokers++
			s.mu.Unlock()
			s.printf("infra process (broker, PostgreSQL, ingest, relay) restarted in %s", time.Since(t0).Round(100*time.Millisecond))
		}
	}
	return nil
}

// restartPostgres stops the private cluster (fast: sessions are cut) and
// starts it as internal/embedded does. Not `pg_ctl restart`: that starts the
// server without a log file, writing to pg_ctl's output, which would then
// never close.
func (s *soak) restartPostgres(ctx context.Context) error {
	if err := pgCtl(ctx, s.pgDir, "-m", "fast", "-w", "stop"); err != nil {
		return fmt.Errorf("soak: stopping PostgreSQL: %w", err)
	}
	opts := fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -k %s", s.pgPort, s.pgDir)
	if err := pgCtl(ctx, s.pgDir, "-o", opts, "-l", filepath.Join(s.pgDir, "server.log"), "-w", "-t", "60", "start"); err != nil {
		return fmt.Errorf("soak: starting PostgreSQL again: %w", err)
	}
	return nil
}

// drain waits for every expected delivery, up to --drain, and reports whether
// they all arrived.
func (s *soak) drain(ctx context.Context) bool {
	deadline := time.Now().Add(s.cfg.drain)
	for time.Now().Before(deadline) {
		if s.plan.Check(s.recv.PDUs, -1).Totals().Missing == 0 {
			return true
		}
		if err := s.supervise(ctx, time.Now().Add(time.Second)); err != nil {
			return false
		}
	}
	s.printf("deliveries incomplete %s after the last kill", s.cfg.drain)
	return false
}

// supervise waits until t, restarting a process that exited on its own (a
// finding: it is counted and reported, its log kept).
func (s *soak) supervise(ctx context.Context, t time.Time) error {
	for {
		for _, p := range []*soakProc{s.infra, s.stages} {
			if !p.exited() {
				continue
			}
			s.mu.Lock()
			s.selfExits++
			s.mu.Unlock()
			s.printf("the %s process exited on its own (%v); restarting it. Its log ends:\n%s", p.name, p.err, p.tail(10))
			p.cmd = nil
			if p == s.infra {
				if err := stopLeftoverPostgres(ctx, s.pgDir); err != nil {
					return fmt.Errorf("soak: %w", err)
				}
			}
			if err := p.start(); err != nil {
				return err
			}
			if p == s.infra {
				if err := s.waitInfra(ctx); err != nil {
					return err
				}
			}
		}
		if !time.Now().Before(t) {
			return nil
		}
		next := time.Now().Add(200 * time.Millisecond)
		if t.Before(next) {
			next = t
		}
		if err := sleepUntil(ctx, next); err != nil {
			return err
		}
	}
}

func sleepUntil(ctx context.Context, t time.Time) error {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}
