// Package queue runs fedpipe's per-destination federation queues: it batches
// PDUs and EDUs into transactions (≤50 PDUs, ≤100 EDUs, one m.presence EDU
// with the latest state of ≤50 users), keeps one transaction in flight per
// destination, backs failing destinations off (persisted, with Synapse's
// schedule), records what they miss for catch-up instead of holding it in
// memory, and catches them up with the latest event per room when they are
// due again. It has no Kafka and no SQL: it talks to a Transport and a Store.
package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/txn"
)

// Outcome is what a failed send means for the destination.
type Outcome int

const (
	// Retry: transient, and the transport already retried; the destination backs off.
	Retry Outcome = iota + 1
	// Backoff: the destination refuses or cannot be reached; it backs off.
	Backoff
	// Fatal: the transaction itself is wrong; it is dropped (and counted), the destination is not penalised.
	Fatal
)

// Transport sends one transaction. (*client.Client).SendTransaction fits.
type Transport interface {
	SendTransaction(ctx context.Context, t *txn.Transaction) (txn.Response, error)
}

// RetryState is a destination's backoff.
type RetryState struct {
	// Interval is the current backoff; zero when the destination is healthy.
	Interval time.Duration
	// NextAttempt is when it may be tried again.
	NextAttempt time.Time
	// Paused is set by an operator (loaded, never saved by the queue): the
	// destination is treated as backing off until it is resumed.
	Paused bool
}

// Failing reports whether the destination is backing off at now.
func (r RetryState) Failing(now time.Time) bool {
	return r.Paused || (r.Interval > 0 && now.Before(r.NextAttempt))
}

// CatchUp is a room a destination missed while backing off: its latest event.
type CatchUp struct {
	RoomID   string
	Position int64
	EventID  string
	// PDU is filled by Store.CatchUpRooms.
	PDU json.RawMessage
}

// Store keeps what must survive restarts and move between sender members.
type Store interface {
	// LoadRetry returns the destination's backoff (zero when none).
	LoadRetry(ctx context.Context, dest string) (RetryState, error)
	// SaveRetry stores the destination's backoff; a zero state clears it.
	// It leaves Paused as it is stored.
	SaveRetry(ctx context.Context, dest string, r RetryState) error
	// RecordSuccess notes that the destination accepted a transaction holding
	// PDUs up to stream position (the last successful position never moves back).
	RecordSuccess(ctx context.Context, dest string, position int64) error
	// RecordCatchUp remembers, per room, the latest event the destination missed.
	RecordCatchUp(ctx context.Context, dest string, rooms []CatchUp) error
	// CatchUpRooms returns up to limit of the destination's missed rooms with
	// their latest PDU, oldest position first (PDU nil when the event is not
	// stored), so a destination missing thousands of rooms is caught up in
	// bounded memory.
	CatchUpRooms(ctx context.Context, dest string, limit int) ([]CatchUp, error)
	// ClearCatchUp forgets a room once its event was delivered, unless a later
	// event was recorded meanwhile.
	ClearCatchUp(ctx context.Context, dest string, c CatchUp) error
	// DueDestinations lists up to limit destinations with catch-up rows whose
	// backoff has ended and that are not paused, in name order after the name after ("" from the
	// start): the caller pages through them, so destinations other members
	// own (or that are busy) cannot hide the rest behind the limit.
	DueDestinations(ctx context.Context, now time.Time, after string, limit int) ([]string, error)
}

// Item is one PDU, EDU or set of presence states for a destination.
type Item struct {
	// PDU fields.
	RoomID   string
	EventID  string
	Position int64
	PDU      json.RawMessage
	// EDU, when PDU and Presence are empty. An m.presence EDU is read into
	// presence states (and sent as it is when it cannot be read).
	EDU txn.EDU
	// Presence, when PDU is empty, holds local users' presence states (one
	// per user). The queue keeps only the latest state per user and sends them
	// in one m.presence EDU per transaction (≤50 users), aged to the time the
	// transaction is built.
	Presence []edu.PresenceState
	// Done is called once the item is delivered, recorded for catch-up, or
	// dropped by a documented rule: a presence state is also done when a later
	// state of the same user for the same destination replaces it unsent.
	Done func()
}

func (it Item) isPDU() bool      { return len(it.PDU) > 0 }
func (it Item) isPresence() bool { return !it.isPDU() && len(it.Presence) > 0 }

// Config configures a Manager. Defaults are Synapse's.
type Config struct {
	// Origin is our server name.
	Origin string
	// Classify maps a Transport error to an Outcome.
	Classify func(error) Outcome
	// BackoffInitial, BackoffMultiplier and BackoffMax shape the backoff: 10 min, ×2, 7 days.
	BackoffInitial    time.Duration
	BackoffMultiplier float64
	BackoffMax        time.Duration
	// JitterMin and JitterMax scale each interval randomly (0.8–1.4).
	JitterMin, JitterMax float64
	// CatchUpInterval is how often due destinations are looked for.
	CatchUpInterval time.Duration
	// WakeupsPerTick bounds how many destinations start catching up per
	// CatchUpInterval, so thousands due at once do not open thousands of
	// connections in the same second.
	WakeupsPerTick int
	// CatchUpBatch is how many missed rooms are read at a time (default 50).
	CatchUpBatch int
	// Owns reports whether this member serves dest now (its partition is
	// assigned here), so destinations due for catch-up after a restart are woken
	// by their owner only. Nil: only destinations with a queue are woken.
	Owns func(dest string) bool
	// RetryAttempts is how many more times a transaction failing with Retry is
	// sent, with the same transaction id, before the destination backs off
	// (default 2; -1 for none): the transport's in-request retries span about a
	// second, and one 503 should not silence a server for 10 minutes.
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
	if c.Classify == nil {
		return errors.New("queue: Classify must be set")
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
	if c.WakeupsPerTick == 0 {
		c.WakeupsPerTick = 20
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.RetryAttempts < -1 || c.StoreAttempts < 0 || c.RetryDelay < 0 || c.StoreRetryDelay < 0 {
		return errors.New("queue: retry settings must not be negative")
	}
	if c.BackoffMultiplier < 1 || c.JitterMin <= 0 || c.JitterMax < c.JitterMin || c.BackoffMax < c.BackoffInitial {
		return fmt.Errorf("queue: invalid backoff settings")
	}
	return nil
}

// nextInterval grows the backoff: initial, then ×multiplier up to the maximum.
func (c *Config) nextInterval(prev time.Duration) time.Duration {
	if prev <= 0 {
		return c.BackoffInitial
	}
	next := time.Duration(float64(prev) * c.BackoffMultiplier)
	return min(next, c.BackoffMax)
}

// jitter scales d by a random factor in [JitterMin, JitterMax).
func (c *Config) jitter(d time.Duration, r float64) time.Duration {
	return time.Duration(float64(d) * (c.JitterMin + r*(c.JitterMax-c.JitterMin)))
}
