package embedded

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresConfig configures the private PostgreSQL cluster.
type PostgresConfig struct {
	// DataDir holds the cluster; it is initialised on first start and reused.
	DataDir string
	// Port on 127.0.0.1; 0 picks a free one.
	Port int
	// BinDir holds initdb and pg_ctl; empty searches PATH and /usr/lib/postgresql/*/bin.
	BinDir string
	// RunAs is the unprivileged user the server runs as when fedpipe runs as root
	// (PostgreSQL refuses to run as root). Default "postgres".
	RunAs string
}

// Postgres is a running private cluster.
type Postgres struct {
	cfg      PostgresConfig
	bin      string
	cred     *syscall.Credential
	url      string
	log      *slog.Logger
	stopOnce sync.Once
	stopErr  error
}

// StartPostgres initialises (once) and starts the cluster, and creates the
// database "fedpipe" in it.
func StartPostgres(ctx context.Context, cfg PostgresConfig, logger *slog.Logger) (*Postgres, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("private PostgreSQL: a data directory is required")
	}
	if cfg.RunAs == "" {
		cfg.RunAs = "postgres"
	}
	bin, err := findBinaries(cfg.BinDir)
	if err != nil {
		return nil, err
	}
	p := &Postgres{cfg: cfg, bin: bin, log: logger}
	if os.Geteuid() == 0 {
		u, err := user.Lookup(cfg.RunAs)
		if err != nil {
			return nil, fmt.Errorf("private PostgreSQL: running as root, and user %q to run the server as: %w", cfg.RunAs, err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	if cfg.Port == 0 {
		if cfg.Port, err = freePort(); err != nil {
			return nil, err
		}
		p.cfg.Port = cfg.Port
	}
	if p.cred != nil {
		if err := reachable(filepath.Dir(cfg.DataDir), p.cred, cfg.RunAs); err != nil {
			if p.cfg.DataDir, err = relocate(cfg.DataDir, err, logger); err != nil {
				return nil, err
			}
		}
	}
	if err := p.initOnce(ctx); err != nil {
		return nil, err
	}
	if err := p.start(ctx); err != nil {
		return nil, err
	}
	p.url = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/fedpipe?sslmode=disable", cfg.Port)
	if err := p.createDatabase(ctx); err != nil {
		_ = p.Stop(context.Background())
		return nil, err
	}
	logger.Info("private PostgreSQL started", "port", cfg.Port, "data_dir", p.cfg.DataDir)
	return p, nil
}

// DataDir is where the cluster lives: PostgresConfig.DataDir, or where
// StartPostgres moved it (see relocate).
func (p *Postgres) DataDir() string { return p.cfg.DataDir }

// relocate finds a home for a cluster whose data directory the server's user
// cannot reach (a checkout under /root, as root): a directory of its own
// under /var/tmp named after the data directory, so the same data_dir finds
// it again, and a note in the data directory saying where it went.
func relocate(dataDir string, unreachable error, logger *slog.Logger) (string, error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(abs))
	moved := filepath.Join(os.TempDir(), "fedpipe-postgres-"+hex.EncodeToString(sum[:6]))
	if os.TempDir() != "/var/tmp" && dirExists("/var/tmp") {
		moved = filepath.Join("/var/tmp", filepath.Base(moved)) // survives a reboot
	}
	parent := filepath.Dir(abs)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", fmt.Errorf("private PostgreSQL: %w", err)
	}
	note := filepath.Join(parent, filepath.Base(abs)+".location")
	if err := os.WriteFile(note, []byte(moved+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("private PostgreSQL: noting where the cluster lives: %w", err)
	}
	logger.Warn("private PostgreSQL moved where its server user can reach it", "reason", unreachable, "data_dir", moved, "noted_in", note)
	return moved, nil
}

func dirExists(d string) bool {
	st, err := os.Stat(d)
	return err == nil && st.IsDir()
}

// URL is the connection URL of the fedpipe database.
func (p *Postgres) URL() string { return p.url }

// Stop shuts the server down (fast mode); it is idempotent.
func (p *Postgres) Stop(ctx context.Context) error {
	p.stopOnce.Do(func() {
		out, err := p.run(ctx, "pg_ctl", "-D", p.cfg.DataDir, "-m", "fast", "-w", "stop")
		if err != nil {
			p.stopErr = fmt.Errorf("stopping private PostgreSQL: %w: %s", err, out)
		}
	})
	return p.stopErr
}

func (p *Postgres) initOnce(ctx context.Context) error {
	if _, err := os.Stat(filepath.Join(p.cfg.DataDir, "PG_VERSION")); err == nil {
		return nil
	}
	if err := os.MkdirAll(p.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("private PostgreSQL: %w", err)
	}
	if p.cred != nil {
		if err := os.Chown(p.cfg.DataDir, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
			return fmt.Errorf("private PostgreSQL: giving %s to %s: %w", p.cfg.DataDir, p.cfg.RunAs, err)
		}
	}
	p.log.Info("initialising a private PostgreSQL cluster", "dir", p.cfg.DataDir)
	out, err := p.run(ctx, "initdb", "-D", p.cfg.DataDir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions")
	if err != nil {
		return fmt.Errorf("private PostgreSQL: initdb: %w: %s", err, out)
	}
	return nil
}

func (p *Postgres) start(ctx context.Context) error {
	opts := fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -k %s", p.cfg.Port, p.cfg.DataDir)
	out, err := p.run(ctx, "pg_ctl", "-D", p.cfg.DataDir, "-o", opts, "-l", filepath.Join(p.cfg.DataDir, "server.log"), "-w", "-t", "60", "start")
	if err != nil {
		return fmt.Errorf("private PostgreSQL: pg_ctl start: %w: %s (see %s)", err, out, filepath.Join(p.cfg.DataDir, "server.log"))
	}
	return nil
}

func (p *Postgres) createDatabase(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.cfg.Port))
	if err != nil {
		return fmt.Errorf("private PostgreSQL: connecting: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'fedpipe')").Scan(&exists); err != nil {
		return fmt.Errorf("private PostgreSQL: %w", err)
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE DATABASE fedpipe"); err != nil {
			return fmt.Errorf("private PostgreSQL: creating database fedpipe: %w", err)
		}
	}
	return nil
}

// run runs a server binary, as the unprivileged user when we are root.
func (p *Postgres) run(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(p.bin, name), args...)
	cmd.Dir = p.cfg.DataDir
	if p.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
		cmd.Dir = "/"
	}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// findBinaries locates the directory with initdb and pg_ctl.
func findBinaries(dir string) (string, error) {
	var tried []string
	has := func(d string) bool {
		tried = append(tried, d)
		for _, b := range []string{"initdb", "pg_ctl", "postgres"} {
			if _, err := os.Stat(filepath.Join(d, b)); err != nil {
				return false
			}
		}
		return true
	}
	if dir != "" {
		if has(dir) {
			return dir, nil
		}
	} else {
		versions, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
		sort.Slice(versions, func(i, j int) bool { return versionOf(versions[i]) > versionOf(versions[j]) })
		for _, d := range versions {
			if has(d) {
				return d, nil
			}
		}
		if path, err := exec.LookPath("initdb"); err == nil {
			if real, err := filepath.EvalSymlinks(path); err == nil && has(filepath.Dir(real)) {
				return filepath.Dir(real), nil
			}
		}
	}
	return "", fmt.Errorf("no PostgreSQL server binaries found (looked in %s); install postgresql or set database.url", strings.Join(tried, ", "))
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// reachable checks that user cred can traverse every directory down to dir:
// PostgreSQL runs as that user, and initdb's own error would only say
// "permission denied".
func reachable(dir string, cred *syscall.Credential, name string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for d := abs; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err == nil {
			sys, ok := st.Sys().(*syscall.Stat_t)
			mode := st.Mode().Perm()
			var canEnter bool
			switch {
			case !ok:
				canEnter = true
			case sys.Uid == cred.Uid:
				canEnter = mode&0o100 != 0
			case sys.Gid == cred.Gid:
				canEnter = mode&0o010 != 0
			default:
				canEnter = mode&0o001 != 0
			}
			if !canEnter {
				return fmt.Errorf("private PostgreSQL runs as user %q, which cannot enter %s (mode %#o): choose a data_dir it can reach (not under /root), or set database.url", name, d, mode)
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
