package sender

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Fence is the queue.Fence of sender members: a PostgreSQL session-level
// advisory lock per destination, held on one connection of this member's
// own while the destination's worker runs (taken with pg_try_advisory_lock,
// so a member never waits inside PostgreSQL). PostgreSQL releases a
// session's locks when the session ends, so a member that died holds
// nothing. When the connection breaks (found by a query, or by the ping Run
// sends every second), every fence it held is lost: the context Acquire
// returned ends, and the holders cancel their sends.
type Fence struct {
	cfg     *pgx.ConnConfig
	log     *slog.Logger
	timeout time.Duration

	mu     sync.Mutex
	conn   *pgx.Conn
	held   map[string]bool
	epoch  context.Context // ends when conn's locks are lost
	cancel context.CancelFunc
}

// NewFence returns a Fence connecting with cfg (a pool's ConnConfig).
func NewFence(cfg *pgx.ConnConfig, logger *slog.Logger) *Fence {
	return &Fence{cfg: cfg.Copy(), log: logger, timeout: 5 * time.Second}
}

// fenceKey is dest's advisory lock key: 64 bits of FNV-1a, so two
// destinations sharing a key (one waiting while the other sends) is
// practically impossible.
func fenceKey(dest string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("fedpipe.sender.destination:" + dest))
	return int64(h.Sum64())
}

// Acquire implements queue.Fence.
func (f *Fence) Acquire(_ context.Context, dest string) (context.Context, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// Not the caller's context: a query cut by it would break the connection
	// and lose every other destination's fence.
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	if f.conn == nil {
		conn, err := pgx.ConnectConfig(ctx, f.cfg)
		if err != nil {
			return nil, fmt.Errorf("connecting for destination fences: %w", err)
		}
		f.conn, f.held = conn, map[string]bool{}
		f.epoch, f.cancel = context.WithCancel(context.Background())
	}
	if f.held[dest] {
		return f.epoch, nil
	}
	var ok bool
	if err := f.conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", fenceKey(dest)).Scan(&ok); err != nil {
		f.lose(err)
		return nil, fmt.Errorf("taking the fence of %s: %w", dest, err)
	}
	if !ok {
		return nil, nil
	}
	f.held[dest] = true
	return f.epoch, nil
}

// Release implements queue.Fence. A failure loses every fence of the
// connection (it is closed), which is what releasing asks for and more.
func (f *Fence) Release(dest string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn == nil || !f.held[dest] {
		return // lost with its connection
	}
	delete(f.held, dest)
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	if _, err := f.conn.Exec(ctx, "SELECT pg_advisory_unlock($1)", fenceKey(dest)); err != nil {
		f.lose(err)
	}
}

// lose closes the connection: its locks are gone, so every holder is told.
// f.mu is held.
func (f *Fence) lose(cause error) {
	if len(f.held) > 0 {
		f.log.Warn("the connection holding destination fences broke; their sends are cancelled", "destinations", len(f.held), "err", cause)
	}
	f.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = f.conn.Close(ctx)
	f.conn, f.held = nil, nil
}

// Run pings the fences' connection every second until ctx ends, so that a
// broken one is found while its holders are sending, not at their next
// Acquire or Release; then it closes the connection (releasing every lock).
func (f *Fence) Run(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			f.mu.Lock()
			if f.conn != nil {
				f.cancel()
				cctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_ = f.conn.Close(cctx)
				cancel()
				f.conn, f.held = nil, nil
			}
			f.mu.Unlock()
			return nil
		case <-t.C:
		}
		f.mu.Lock()
		if f.conn != nil {
			pctx, cancel := context.WithTimeout(context.Background(), f.timeout)
			if err := f.conn.Ping(pctx); err != nil {
				f.lose(err)
			}
			cancel()
		}
		f.mu.Unlock()
	}
}
