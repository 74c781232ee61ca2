package queue

import (
	"errors"
	"fmt"
	"time"

	"github.com/fedpipe/fedpipe/federation/txn"
)

// Config configures a Manager. Defaults are Synapse's.
type Config struct {
	// Origin is our server name. Required.
	Origin string
	// BackoffInitial, BackoffMultiplier and BackoffMax shape the backoff.
	// Default DefaultBackoffInitial (10m), ×2, DefaultBackoffMax (7 days).
	BackoffInitial    time.Duration
	BackoffMultiplier float64
	BackoffMax        time.Duration
	// JitterMin and JitterMax scale each interval randomly. Default (both
	// zero) 0.8–1.4.
	JitterMin, JitterMax float64
	// CatchUpInterval is how often due destinations are looked for (default
	// 1s). A destination held as paused or backing off also reads its stored
	// state again, when something is queued for it, at most this often: an
	// operator's resume or reset takes effect without a catch-up row.
	CatchUpInterval time.Duration
	// WakeupsPerTick bounds how many destinations start catching up per
	// CatchUpInterval, so thousands due at once do not open thousands of
	// connections in the same second; they start one every
	// CatchUpInterval/WakeupsPerTick, not together at the tick. Default 20.
	WakeupsPerTick int
	// CatchUpBatch is how many missed rooms are read at a time. Default
	// (zero or negative) 50.
	CatchUpBatch int
	// Owns reports whether this member serves dest now (its partition is
	// assigned here), so destinations due for catch-up after a restart are woken
	// by their owner only. Nil: only destinations with a queue are woken.
	Owns func(dest string) bool
	// Fence, when set, is held by a destination's worker while it sends: a
	// worker that cannot take it (another member holds it, or the fence's
	// store is down) waits, sending nothing, and tries again every
	// FenceRetryDelay. Nil: no fence (a single member, tests).
	Fence Fence
	// FenceRetryDelay is the pause between tries to take a held fence. Default 200ms.
	FenceRetryDelay time.Duration
	// MaxPending and MaxPendingAge bound what a destination holds to send
	// live: when it holds more than MaxPending PDUs and EDUs (default 10,000,
	// the runtime's in-flight window: a backlog replayed to a healthy
	// destination must not be cut to the latest event per room), or a PDU
	// queued longer than MaxPendingAge ago (default 2m), it goes
	// to catch-up mode as a failing destination does, without backing off:
	// its PDUs are recorded for catch-up (the latest per room) and its EDUs
	// dropped, all done. A slow destination then holds neither memory nor its
	// partition's records, and the other destinations of the partition keep
	// flowing.
	MaxPending    int
	MaxPendingAge time.Duration
	// RetryAttempts is how many more times a transaction failing with
	// txn.Retry is sent, with the same transaction id, before the destination
	// backs off (default 2; -1 for none): the transport's in-request retries
	// span about a second, and one 503 should not silence a server for 10 minutes.
	RetryAttempts int
	// RetryDelay is the pause before the first such retry, doubling. Default 5s.
	RetryDelay time.Duration
	// StoreAttempts bounds the tries of a store write the queue cannot go on
	// without (recording a backoff and what the destination missed); when
	// they are exhausted Run fails, so the records are redelivered after a
	// restart instead of silently stalling the partition. Default 5.
	StoreAttempts int
	// StoreRetryDelay is the first pause between those tries, doubling. Default 200ms.
	StoreRetryDelay time.Duration
	// MaxTransactionBytes is the byte budget of one transaction's body
	// (default DefaultMaxTransactionBytes, 1 MiB, the request limit of a
	// reverse proxy left at nginx's default; at least txn.MinBudget): what
	// would pass it goes in the next transaction. It also bounds the
	// to-device EDUs read from the store at a time.
	MaxTransactionBytes int
	// Linger is how long a destination's worker, started because something
	// was queued for an idle destination, waits before its first
	// transaction, so that what arrives meanwhile goes in the same one.
	// Under light traffic a transaction otherwise carries one or two PDUs,
	// and its signing, TLS and the remote's signature check are paid for
	// those alone. Default DefaultLinger; negative: send at once.
	Linger time.Duration
	// Now is the clock (tests). Default time.Now.
	Now func() time.Time
	// Rand returns a float in [0,1) (tests).
	Rand func() float64
}

const (
	// DefaultBackoffInitial is Config.BackoffInitial when it is zero (Synapse's).
	DefaultBackoffInitial = 10 * time.Minute
	// DefaultBackoffMax is Config.BackoffMax when it is zero (Synapse's).
	DefaultBackoffMax = 7 * 24 * time.Hour
	// DefaultMaxTransactionBytes is Config.MaxTransactionBytes when it is zero.
	DefaultMaxTransactionBytes = 1 << 20
	// DefaultLinger is Config.Linger when it is zero: at 2,390 events/s
	// (7,550 deliveries/s to 50 servers) it cut the CPU per delivery from
	// 163–165 to 142–162 µs and the median p99 commit → arrival from
	// 112 to 86 ms (docs/operations.md, "Transactions").
	DefaultLinger = 5 * time.Millisecond
)

// Validate fills the defaults of zero fields and reports every invalid
// field, each by name.
func (c *Config) Validate() error {
	c.fillDefaults()
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("queue: "+format, args...)) }
	if c.Origin == "" {
		bad("Origin must be set")
	}
	if c.MaxTransactionBytes < txn.MinBudget {
		bad("MaxTransactionBytes must be at least %d bytes (one 64 KiB PDU or EDU), got %d", txn.MinBudget, c.MaxTransactionBytes)
	}
	if c.RetryAttempts < -1 {
		bad("RetryAttempts must not be below -1, got %d", c.RetryAttempts)
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"StoreAttempts", int64(c.StoreAttempts)},
		{"MaxPending", int64(c.MaxPending)},
		{"RetryDelay", int64(c.RetryDelay)},
		{"StoreRetryDelay", int64(c.StoreRetryDelay)},
		{"FenceRetryDelay", int64(c.FenceRetryDelay)},
		{"MaxPendingAge", int64(c.MaxPendingAge)},
	} {
		if f.v < 0 {
			bad("%s must not be negative", f.name)
		}
	}
	if c.BackoffMultiplier < 1 {
		bad("BackoffMultiplier must be at least 1, got %g", c.BackoffMultiplier)
	}
	if c.JitterMin <= 0 || c.JitterMax < c.JitterMin {
		bad("JitterMin and JitterMax must satisfy 0 < JitterMin <= JitterMax, got %g and %g", c.JitterMin, c.JitterMax)
	}
	if c.BackoffMax < c.BackoffInitial {
		bad("BackoffMax %s is shorter than BackoffInitial %s", c.BackoffMax, c.BackoffInitial)
	}
	return errors.Join(errs...)
}

// fillDefaults sets every zero field that has a default.
func (c *Config) fillDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.BackoffInitial, DefaultBackoffInitial)
	def(&c.BackoffMax, DefaultBackoffMax)
	def(&c.CatchUpInterval, time.Second)
	def(&c.RetryDelay, 5*time.Second)
	def(&c.StoreRetryDelay, 200*time.Millisecond)
	def(&c.FenceRetryDelay, 200*time.Millisecond)
	def(&c.Linger, DefaultLinger)
	def(&c.MaxPendingAge, 2*time.Minute)
	if c.MaxPending == 0 {
		c.MaxPending = 10000
	}
	if c.RetryAttempts == 0 {
		c.RetryAttempts = 2
	}
	if c.CatchUpBatch <= 0 {
		c.CatchUpBatch = 50
	}
	if c.StoreAttempts == 0 {
		c.StoreAttempts = 5
	}
	if c.BackoffMultiplier == 0 {
		c.BackoffMultiplier = 2
	}
	if c.JitterMin == 0 && c.JitterMax == 0 {
		c.JitterMin, c.JitterMax = 0.8, 1.4
	}
	if c.MaxTransactionBytes == 0 {
		c.MaxTransactionBytes = DefaultMaxTransactionBytes
	}
	if c.WakeupsPerTick == 0 {
		c.WakeupsPerTick = 20
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// schedule is the backoff schedule Config sets.
func (c *Config) schedule() schedule {
	return schedule{initial: c.BackoffInitial, multiplier: c.BackoffMultiplier, max: c.BackoffMax, jitterMin: c.JitterMin, jitterMax: c.JitterMax}
}
