package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/internal/testing/loadgen"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// buildFedpipe compiles this command once per test binary.
func buildFedpipe(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "fedpipe")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("building fedpipe: %v\n%s", err, out)
	}
	return bin
}

// env renders the pipeline's configuration as FEDPIPE_* variables for a child process.
func (p *pipeline) env() []string {
	var static []string
	for n, a := range p.cfg.Federation.Static {
		static = append(static, n+"="+a)
	}
	return append(os.Environ(),
		"FEDPIPE_SERVER_NAME="+p.cfg.ServerName,
		"FEDPIPE_INSTANCE=child",
		"FEDPIPE_DATA_DIR="+p.cfg.DataDir,
		"FEDPIPE_SIGNING_KEY_PATH="+p.cfg.SigningKeyPath,
		"FEDPIPE_KAFKA_BROKERS="+strings.Join(p.cfg.Kafka.Brokers, ","),
		"FEDPIPE_KAFKA_TOPIC_PREFIX="+p.cfg.Kafka.TopicPrefix,
		fmt.Sprintf("FEDPIPE_KAFKA_PARTITIONS=%d", p.cfg.Kafka.Partitions),
		fmt.Sprintf("FEDPIPE_KAFKA_OUTBOUND_PARTITIONS=%d", p.cfg.Kafka.OutboundPartitions),
		"FEDPIPE_DATABASE_URL="+p.cfg.Database.URL,
		"FEDPIPE_FEDERATION_STATIC="+strings.Join(static, ","),
		"FEDPIPE_FEDERATION_CA_FILE="+p.cfg.Federation.CAFile,
		"FEDPIPE_FEDERATION_ALLOWED_NETWORKS=127.0.0.0/8",
		"FEDPIPE_INGEST_LISTEN=",
		"FEDPIPE_ADMIN_LISTEN=",
		"FEDPIPE_LOG_LEVEL=warn",
	)
}

// startRouterSender starts `fedpipe run --stages=router,sender` from bin with
// env, its output in t's log: the process the kill tests kill.
func startRouterSender(t *testing.T, bin string, env []string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, "run", "--stages=router,sender")
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// A process running router and sender is killed with SIGKILL in the middle of
// a 10,000-event run and restarted: every (event, server) delivery happens, and
// duplicates stay within what was in flight (uncommitted) at the kill.
func TestSIGKILLMidRunLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills a fedpipe process")
	}
	bin := buildFedpipe(t)
	p := newPipeline(t, remotes(5))
	p.start("relay")
	plan := p.plan(100, 10000, 3)
	startChild := func() *exec.Cmd { return startRouterSender(t, bin, p.env()) }
	child := startChild()
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	// Ingest while the child works, so the kill lands in the middle of the run.
	ingested := make(chan error, 1)
	go func() {
		_, err := plan.Ingest(context.Background(), loadgen.PoolPersister(p.in.pool), 100, nil)
		ingested <- err
	}()
	testenv.Eventually(t, 90*time.Second, "a third of the deliveries before the kill", func() bool {
		return p.recv.TotalPDUs() >= plan.Expected/3
	})
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	atKill := p.recv.TotalPDUs()
	child = startChild()
	if err := <-ingested; err != nil {
		t.Fatal(err)
	}
	rep := p.waitDelivered(plan, 180*time.Second)
	if !rep.OK() {
		rep.Print(testWriter{t})
		t.Fatal("deliveries wrong after SIGKILL and restart")
	}
	dups := rep.Totals().Duplicates
	t.Logf("killed at %d of %d deliveries; %d duplicates after restart", atKill, plan.Expected, dups)
	if atKill >= plan.Expected {
		t.Fatalf("the kill came after every delivery (%d of %d): it tested no restart mid-run", atKill, plan.Expected)
	}
	// In flight at the kill: per destination at most one transaction (50
	// PDUs) the remote accepted before the sender wrote so
	// (sender_destination_rooms). Everything else replayed from the
	// uncommitted offsets, re-routed or re-read, is found accepted and not
	// sent again.
	if bound := txn.MaxPDUs * len(p.recv.Names()); dups > bound {
		t.Fatalf("%d duplicates: more than the %d one transaction per destination can hold", dups, bound)
	}
}

func TestDemoPassesWithSmallLoad(t *testing.T) {
	k := testenv.NewKafka(t)
	dir := t.TempDir()
	out, err := run(t, "demo", "--rooms=5", "--servers=3", "--events=300", "--timeout=60s",
		"--server_name=demo.local", "--data_dir="+dir, "--kafka.brokers="+k.Addr, "--kafka.topic_prefix="+k.Prefix, "--database.url="+testenv.Database(t),
		"--kafka.partitions=4", "--kafka.outbound_partitions=4", "--ingest.listen=", "--admin.listen=", "--log_level=warn")
	if err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out)
	}
	if !strings.Contains(out, "all ") || !strings.Contains(out, "remote0.demo") {
		t.Fatalf("demo output lacks its report:\n%s", out)
	}
}

// The demo runs on its own directory and ports: twice in one directory (its
// load's rooms and events are new each run), beside a `fedpipe run` holding the
// default ports, and without --data_dir it leaves nothing behind, all on its
// embedded broker and PostgreSQL.
func TestDemoTwiceInOneDirectoryBesideRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts embedded PostgreSQL clusters")
	}
	for _, port := range []string{"9092", "5433", "8008", "9100"} { // what `fedpipe run` holds
		if ln, err := net.Listen("tcp", "127.0.0.1:"+port); err == nil {
			t.Cleanup(func() { ln.Close() })
		}
	}
	dir, err := os.MkdirTemp("", "fedpipe-demo-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // the embedded cluster runs as postgres when we are root
		t.Fatal(err)
	}
	args := []string{"demo", "--rooms=3", "--servers=2", "--events=60", "--timeout=90s", "--server_name=demo.local", "--log_level=warn"}
	for i := range 2 {
		out, err := run(t, append(args, "--data_dir="+dir)...)
		if err != nil || !strings.Contains(out, "all ") || !strings.Contains(out, "set ") {
			t.Fatalf("demo run %d in %s: %v\n%s", i+1, dir, err, out)
		}
	}
	wd, _ := os.Getwd()
	before, _ := os.ReadDir(wd)
	out, err := run(t, args...)
	if err != nil || !strings.Contains(out, "removed at the end") {
		t.Fatalf("demo without --data_dir: %v\n%s", err, out)
	}
	if after, _ := os.ReadDir(wd); len(after) != len(before) {
		t.Fatalf("the demo left files in %s: %d entries before, %d after", wd, len(before), len(after))
	}
}

// fedpipe run says, once started, where to look: the status page and the
// ingest API answer at the addresses it prints.
func TestRunPrintsWhereToLook(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a fedpipe process")
	}
	bin := buildFedpipe(t)
	p := newPipeline(t, remotes(1))
	cmd := exec.Command(bin, "run", "--stages=ingest")
	cmd.Env = append(p.env(), "FEDPIPE_INGEST_LISTEN=127.0.0.1:0", "FEDPIPE_ADMIN_LISTEN=127.0.0.1:0")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	status := regexp.MustCompile(`status page  (http://\S+/) `)
	ingestURL := regexp.MustCompile(`ingest API   (http://\S+) `)
	testenv.Eventually(t, 60*time.Second, "fedpipe run to say where to look", func() bool {
		s := out.String()
		return status.MatchString(s) && ingestURL.MatchString(s) && strings.Contains(s, "fedpipe demo")
	})
	for _, u := range []string{status.FindStringSubmatch(out.String())[1], ingestURL.FindStringSubmatch(out.String())[1]} {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatalf("%s, as printed: %v", u, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("%s, as printed, answered %d", u, resp.StatusCode)
		}
	}
	t.Logf("fedpipe run printed:\n%s", out.String())
}

// syncBuffer is a bytes.Buffer a child process writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }
