package sender

import (
	"context"
	"errors"
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
// Run owns the connection and takes and gives back locks in rounds: every
// Acquire and Release waiting when a round starts goes out in that round's
// single round trip. A member starts and ends a worker per destination and
// transaction under steady traffic; one round trip per call, through one
// connection, made every worker wait for all the others (20 ms per Acquire
// at 860 a second). Release only queues its unlock: a worker does not wait
// for it, and an Acquire of a destination whose unlock has not gone out yet
// keeps the lock without a round trip.
type Fence struct {
	cfg     *pgx.ConnConfig
	log     *slog.Logger
	timeout time.Duration
	kick    chan struct{}

	mu       sync.Mutex
	held     map[string]bool                // locks the connection holds, and pending ones
	acquires map[string][]chan fenceOutcome // waiting Acquires, by destination
	releases map[string]bool                // unlocks not sent yet
	epoch    context.Context                // ends when the connection's locks are lost
	cancel   context.CancelFunc
	stopped  bool // Run has ended: Acquire fails

	conn *pgx.Conn // used by Run's goroutine only
}

type fenceOutcome struct {
	held context.Context
	err  error
}

// errFenceStopped is Acquire's error once Run has ended.
var errFenceStopped = errors.New("destination fences stopped")

// NewFence returns a Fence connecting with cfg (a pool's ConnConfig). Its Run
// must be running for Acquire to return.
func NewFence(cfg *pgx.ConnConfig, logger *slog.Logger) *Fence {
	return &Fence{cfg: cfg.Copy(), log: logger, timeout: 5 * time.Second, kick: make(chan struct{}, 1),
		held: map[string]bool{}, acquires: map[string][]chan fenceOutcome{}, releases: map[string]bool{}}
}

// fenceKey is dest's advisory lock key: 64 bits of FNV-1a, so two
// destinations sharing a key (one waiting while the other sends) is
// practically impossible.
func fenceKey(dest string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("fedpipe.sender.destination:" + dest))
	return int64(h.Sum64())
}

// Acquire implements queue.Fence. It waits for the next round's answer, not
// for ctx: a round trip cut short would break the connection and lose every
// other destination's fence; a round is bounded by the fence's timeout.
func (f *Fence) Acquire(_ context.Context, dest string) (context.Context, error) {
	f.mu.Lock()
	if f.stopped {
		f.mu.Unlock()
		return nil, errFenceStopped
	}
	if f.held[dest] {
		// Held already, or given back with the unlock not yet sent: keep it.
		delete(f.releases, dest)
		epoch := f.epoch
		f.mu.Unlock()
		return epoch, nil
	}
	answer := make(chan fenceOutcome, 1)
	f.acquires[dest] = append(f.acquires[dest], answer)
	f.mu.Unlock()
	f.wake()
	o := <-answer
	return o.held, o.err
}

// Release implements queue.Fence: the unlock goes out with Run's next round.
// A failure there loses every fence of the connection (it is closed), which
// is what releasing asks for and more.
func (f *Fence) Release(dest string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.held[dest] {
		return // lost with its connection
	}
	f.releases[dest] = true
	f.wake()
}

func (f *Fence) wake() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// Run takes and gives back locks as they are asked for, and pings the
// connection every second, so that a broken one is found while its holders
// are sending, not at their next round; when ctx ends it closes the
// connection (releasing every lock) and fails waiting and later Acquires.
func (f *Fence) Run(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			f.stop()
			return nil
		case <-f.kick:
			f.round()
		case <-t.C:
			f.ping()
		}
	}
}

// round sends the waiting unlocks and lock attempts in one round trip and
// answers the Acquires.
func (f *Fence) round() {
	f.mu.Lock()
	acquires, releases := f.acquires, f.releases
	f.acquires, f.releases = map[string][]chan fenceOutcome{}, map[string]bool{}
	for dest := range releases {
		delete(f.held, dest)
	}
	f.mu.Unlock()
	if len(acquires) == 0 && len(releases) == 0 {
		return
	}
	answer := func(dest string, o fenceOutcome) {
		for _, a := range acquires[dest] {
			a <- o
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	if err := f.connect(ctx); err != nil {
		for dest := range acquires {
			answer(dest, fenceOutcome{err: err})
		}
		return
	}
	dests := make([]string, 0, len(acquires))
	for dest := range acquires {
		dests = append(dests, dest)
	}
	taken, err := f.send(ctx, dests, releases)
	f.mu.Lock()
	if err != nil {
		f.lose(err)
	}
	epoch := f.epoch
	for i, dest := range dests {
		if err == nil && taken[i] {
			f.held[dest] = true
		}
	}
	f.mu.Unlock()
	for i, dest := range dests {
		switch {
		case err != nil:
			answer(dest, fenceOutcome{err: fmt.Errorf("taking the fence of %s: %w", dest, err)})
		case taken[i]:
			answer(dest, fenceOutcome{held: epoch})
		default:
			answer(dest, fenceOutcome{})
		}
	}
}

// connect opens the fences' connection if none is open.
func (f *Fence) connect(ctx context.Context) error {
	if f.conn != nil {
		return nil
	}
	conn, err := pgx.ConnectConfig(ctx, f.cfg)
	if err != nil {
		return fmt.Errorf("connecting for destination fences: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conn, f.held = conn, map[string]bool{}
	f.epoch, f.cancel = context.WithCancel(context.Background())
	return nil
}

// send unlocks releases and tries to lock dests in one round trip, and
// returns, for each of dests, whether it was taken.
func (f *Fence) send(ctx context.Context, dests []string, releases map[string]bool) ([]bool, error) {
	b := &pgx.Batch{}
	if len(releases) > 0 {
		keys := make([]int64, 0, len(releases))
		for dest := range releases {
			keys = append(keys, fenceKey(dest))
		}
		b.Queue("SELECT pg_advisory_unlock(k) FROM unnest($1::bigint[]) AS k", keys)
	}
	if len(dests) > 0 {
		keys := make([]int64, len(dests))
		for i, dest := range dests {
			keys[i] = fenceKey(dest)
		}
		b.Queue("SELECT pg_try_advisory_lock(k) FROM unnest($1::bigint[]) WITH ORDINALITY AS t(k, i) ORDER BY i", keys)
	}
	br := f.conn.SendBatch(ctx, b)
	if len(releases) > 0 {
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			return nil, fmt.Errorf("giving back %d fences: %w", len(releases), err)
		}
	}
	taken := make([]bool, 0, len(dests))
	if len(dests) > 0 {
		rows, err := br.Query()
		if err == nil {
			taken, err = pgx.CollectRows(rows, pgx.RowTo[bool])
		}
		if err == nil && len(taken) != len(dests) {
			err = fmt.Errorf("%d answers to %d lock attempts", len(taken), len(dests))
		}
		if err != nil {
			_ = br.Close()
			return nil, err
		}
	}
	return taken, br.Close()
}

// ping checks the connection, if one is open.
func (f *Fence) ping() {
	if f.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	if err := f.conn.Ping(ctx); err != nil {
		f.mu.Lock()
		f.lose(err)
		f.mu.Unlock()
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
	f.conn, f.held, f.releases = nil, map[string]bool{}, map[string]bool{}
}

// stop closes the connection, releasing every lock, and fails the Acquires
// waiting and to come.
func (f *Fence) stop() {
	f.mu.Lock()
	f.stopped = true
	acquires := f.acquires
	f.acquires = map[string][]chan fenceOutcome{}
	if f.conn != nil {
		f.cancel()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = f.conn.Close(ctx)
		cancel()
		f.conn, f.held, f.releases = nil, map[string]bool{}, map[string]bool{}
	}
	f.mu.Unlock()
	for _, waiting := range acquires {
		for _, a := range waiting {
			a <- fenceOutcome{err: errFenceStopped}
		}
	}
}
