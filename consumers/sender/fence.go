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
//
// Release is lazy: a released lock stays taken for fenceLinger, and Run gives
// back the locks released longer ago in one statement. Under steady traffic
// a destination's worker ends at nearly every empty queue and the next one
// starts a moment later: it finds the lock still taken by this member and
// takes it without a round trip, where the worker before had taken and given
// it back through the one connection every destination of the member shares.
// Another member taking a revoked destination over waits that much longer
// (it retries every queue.Config.FenceRetryDelay).
type Fence struct {
	cfg     *pgx.ConnConfig
	log     *slog.Logger
	timeout time.Duration
	linger  time.Duration

	mu        sync.Mutex
	conn      *pgx.Conn
	held      map[string]bool
	releasing map[string]time.Time // held, released by its worker at
	epoch     context.Context      // ends when conn's locks are lost
	cancel    context.CancelFunc
}

// fenceLinger is how long a released fence stays taken (see Fence).
const fenceLinger = 250 * time.Millisecond

// NewFence returns a Fence connecting with cfg (a pool's ConnConfig).
func NewFence(cfg *pgx.ConnConfig, logger *slog.Logger) *Fence {
	return &Fence{cfg: cfg.Copy(), log: logger, timeout: 5 * time.Second, linger: fenceLinger, releasing: map[string]time.Time{}}
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
		delete(f.releasing, dest) // released a moment ago: taken again as it is
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
// The lock is given back by Run, fenceLinger later (see Fence).
func (f *Fence) Release(dest string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn == nil || !f.held[dest] {
		return // lost with its connection
	}
	f.releasing[dest] = time.Now()
}

// unlockDue gives back, in one statement, the locks released at least
// fenceLinger before now. f.mu is held.
func (f *Fence) unlockDue(now time.Time) {
	if f.conn == nil || len(f.releasing) == 0 {
		return
	}
	var keys []int64
	for dest, at := range f.releasing {
		if now.Sub(at) >= f.linger {
			keys = append(keys, fenceKey(dest))
			delete(f.releasing, dest)
			delete(f.held, dest)
		}
	}
	if len(keys) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	if _, err := f.conn.Exec(ctx, "SELECT pg_advisory_unlock(k) FROM unnest($1::bigint[]) k", keys); err != nil {
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
	f.conn, f.held, f.releasing = nil, nil, map[string]time.Time{}
}

// Run gives back released locks (see Fence) and pings the fences' connection
// every second until ctx ends, so that a broken one is found while its
// holders are sending, not at their next Acquire or Release; then it closes
// the connection (releasing every lock).
func (f *Fence) Run(ctx context.Context) error {
	ping := time.NewTicker(time.Second)
	defer ping.Stop()
	unlock := time.NewTicker(f.linger / 2)
	defer unlock.Stop()
	for {
		select {
		case <-ctx.Done():
			f.mu.Lock()
			if f.conn != nil {
				f.cancel()
				cctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_ = f.conn.Close(cctx)
				cancel()
				f.conn, f.held, f.releasing = nil, nil, map[string]time.Time{}
			}
			f.mu.Unlock()
			return nil
		case now := <-unlock.C:
			f.mu.Lock()
			f.unlockDue(now)
			f.mu.Unlock()
		case <-ping.C:
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
}
