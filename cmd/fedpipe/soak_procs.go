package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// soakProc is one fedpipe child process of the soak: started, killed and
// started again. Its output is appended to one log file across restarts.
type soakProc struct {
	name    string
	bin     string
	args    []string
	env     []string
	logPath string

	cmd    *exec.Cmd
	logf   *os.File
	done   chan struct{} // closed when the running process has been waited for
	err    error         // its exit status, valid after done
	starts int
}

// start starts the process; it must not be running.
func (p *soakProc) start() error {
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("opening %s: %w", p.logPath, err)
	}
	p.starts++
	fmt.Fprintf(f, "=== soak: start %d of %s at %s\n", p.starts, p.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("starting the %s process: %w", p.name, err)
	}
	p.cmd, p.logf, p.done = cmd, f, make(chan struct{})
	// Waited for by every stop: kill and terminate wait on done.
	go func(done chan struct{}) {
		p.err = cmd.Wait()
		f.Close()
		close(done)
	}(p.done)
	return nil
}

// exited reports whether the process ended without being stopped.
func (p *soakProc) exited() bool {
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *soakProc) kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	p.cmd = nil
}

// terminate asks the process to stop (SIGTERM) and waits up to grace, then kills it.
// It reports whether the process stopped by itself.
func (p *soakProc) terminate(grace time.Duration) bool {
	if p.cmd == nil {
		return true
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		p.cmd = nil
		return true
	case <-time.After(grace):
		p.kill()
		return false
	}
}

// tail returns the last n lines of the process's log, for error messages.
func (p *soakProc) tail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// waitListening waits until every address accepts TCP connections, failing
// early when the process exits.
func (p *soakProc) waitListening(ctx context.Context, timeout time.Duration, addrs ...string) error {
	deadline := time.Now().Add(timeout)
	for _, a := range addrs {
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if p.exited() {
				return fmt.Errorf("the %s process exited while starting (%v); its log ends:\n%s", p.name, p.err, p.tail(20))
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("the %s process does not listen on %s after %s; its log ends:\n%s", p.name, a, timeout, p.tail(20))
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// childEnv is the parent's environment without FEDPIPE_* variables (the soak
// configures its children completely) plus kv.
func childEnv(kv ...string) []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "FEDPIPE_") {
			env = append(env, e)
		}
	}
	return append(env, kv...)
}

// freePorts reserves n distinct free ports on 127.0.0.1 (released on return:
// another program could take one before the child binds it, which fails the start clearly).
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		lns = append(lns, ln)
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

// pgCtl runs pg_ctl on the embedded cluster in dataDir, as the postgres account
// when we are root (the server refuses root), as internal/embedded does.
func pgCtl(ctx context.Context, dataDir string, args ...string) error {
	bin, err := pgCtlPath()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"-D", dataDir}, args...)...)
	cmd.Dir = "/"
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("running pg_ctl as postgres: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// pgCtlPath finds pg_ctl where internal/embedded looks for the server binaries.
func pgCtlPath() (string, error) {
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	sort.Slice(found, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(found[i]))))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(found[j]))))
		return vi > vj
	})
	if len(found) > 0 {
		return found[0], nil
	}
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		return p, nil
	}
	return "", errors.New("pg_ctl not found (looked in /usr/lib/postgresql/*/bin and PATH)")
}

// stopLeftoverPostgres stops the embedded cluster when a killed infra process
// left it running (pg_ctl starts the server detached from fedpipe).
func stopLeftoverPostgres(ctx context.Context, dataDir string) error {
	if _, err := os.Stat(filepath.Join(dataDir, "postmaster.pid")); err != nil {
		return nil
	}
	return pgCtl(ctx, dataDir, "-m", "fast", "-w", "stop")
}
