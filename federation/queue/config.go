package queue

import (
	"errors"
	"fmt"
	"time"

	"github.com/fedpipe/fedpipe/federation/txn"
)

// Config configures a Manager. Defaults are Synapse's.
type Config struct {
	// Origin is our server name.
	Origin string
	// BackoffInitial, BackoffMultiplier and BackoffMax shape the backoff: 10 min, ×2, 7 days.
	BackoffInitial    time.Duration
	BackoffMultiplier float64
	BackoffMax        time.Duration
	// JitterMin and JitterMax scale each interval randomly (0.8–1.4).
	JitterMin, JitterMax float64
	// CatchUpInterval is how often due destinations are looked for. A
	// destination held as paused or backing off also reads its stored state
	// again, when something is queued for it, at most this often: an
	// operator's resume or reset takes effect without a catch-up row.
	CatchUpInterval time.Duration
	// WakeupsPerTick bounds how many destinations start catching up per
	// CatchUpInterval, so thousands due at once do not open thousands of
	// connections in the same second; they start one every
	// CatchUpInterval/WakeupsPerTick, not together at the tick.
	WakeupsPerTick int
	// CatchUpBatch is how many missed rooms are read at a time (default 50).
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
	// FenceRetryDelay is the pause between tries to take a held fence (default 200 ms).
	FenceRetryDelay time.Duration
	// MaxPending and MaxPendingAge bound what a destination holds to send
	// live: when it holds more than MaxPending PDUs and EDUs (default 10,000,
	// the runtime's in-flight window: a backlog replayed to a healthy
	// destination must not be cut to the latest event per room), or a PDU
	// queued longer than MaxPendingAge ago (default 2 min), it goes
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
	// RetryDelay is the pause before the first such retry, doubling (default 5 s).
	RetryDelay time.Duration
	// StoreAttempts bounds the tries of a store write the queue cannot go on
	// without (recording a backoff and what the destination missed); when
	// they are exhausted Run fails, so the records are redelivered after a
	// restart instead of silently stalling the partition (default 5).
	StoreAttempts int
	// StoreRetryDelay is the first pause between those tries, doubling (default 200 ms).
	StoreRetryDelay time.Duration
	// MaxTransactionBytes is the byte budget of one transaction's body
	// (default 1 MiB, the request limit of a reverse proxy left at nginx's
	// default; at least txn.MinBudget): what would pass it goes in the next
	// transaction. It also bounds the to-device EDUs read from the store at
	// a time.
	MaxTransactionBytes int
	// Now is the clock (tests).
	Now func() time.Time
	// Rand returns a float in [0,1) (tests).
	Rand func() float64
}

// Validate fills in defaults and reports invalid settings.
func (c *Config) Validate() error {
	if c.Origin == "" {
		return errors.New("queue: origin must be set")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.BackoffInitial, 10*time.Minute)
	def(&c.BackoffMax, 7*24*time.Hour)
	def(&c.CatchUpInterval, time.Second)
	def(&c.RetryDelay, 5*time.Second)
	def(&c.StoreRetryDelay, 200*time.Millisecond)
	def(&c.FenceRetryDelay, 200*time.Millisecond)
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
		c.MaxTransactionBytes = 1 << 20
	}
	if c.MaxTransactionBytes < txn.MinBudget {
		return fmt.Errorf("queue: the transaction byte budget must be at least %d bytes (one 64 KiB PDU or EDU), got %d", txn.MinBudget, c.MaxTransactionBytes)
	}
	if c.WakeupsPerTick == 0 {
		c.WakeupsPerTick = 20
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.RetryAttempts < -1 || c.StoreAttempts < 0 || c.RetryDelay < 0 || c.StoreRetryDelay < 0 || c.FenceRetryDelay < 0 || c.MaxPending < 0 || c.MaxPendingAge < 0 {
		return errors.New("queue: retry settings must not be negative")
	}
	if c.BackoffMultiplier < 1 || c.JitterMin <= 0 || c.JitterMax < c.JitterMin || c.BackoffMax < c.BackoffInitial {
		return errors.New("queue: invalid backoff settings")
	}
	return nil
}

// schedule is the backoff schedule Config sets.
func (c *Config) schedule() schedule {
	return schedule{initial: c.BackoffInitial, multiplier: c.BackoffMultiplier, max: c.BackoffMax, jitterMin: c.JitterMin, jitterMax: c.JitterMax}
}
