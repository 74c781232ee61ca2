// Package queue runs fedpipe's per-destination federation queues: outbound PDUs
// and EDUs are batched into transactions (at most 50 PDUs and 100 EDUs), one
// transaction is in flight per destination, a failing destination is backed off
// with Synapse's persisted schedule, and while it is backed off its PDUs are
// recorded for catch-up instead of held in memory. When it is due again the
// latest event of each room is sent, one room per transaction, then live
// sending resumes. It imports no Kafka and no SQL: the transport and the store
// are the small interfaces declared here.
package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fedpipe/fedpipe/federation/txn"
)

// Transport sends one transaction to its destination and returns the
// receiver's per-PDU results (the federation client's SendTransaction).
type Transport interface {
	Send(ctx context.Context, t *txn.Transaction) (txn.Response, error)
}

// ErrorKind is what a failed Send means for the destination.
type ErrorKind int

const (
	// KindRetry is a transient failure the transport has already retried
	// within the request: the destination is backed off after the queue's
	// own RetryAttempts of the same transaction.
	KindRetry ErrorKind = iota + 1
	// KindBackoff means the destination cannot take our transactions now.
	KindBackoff
	// KindFatal means the transaction itself is wrong (our bug): its items are
	// dropped and the queue moves on.
	KindFatal
)

func (k ErrorKind) String() string {
	switch k {
	case KindRetry:
		return "retry"
	case KindBackoff:
		return "backoff"
	case KindFatal:
		return "fatal"
	}
	return "unknown"
}

// Classifier is implemented by a Transport that can say what its errors mean;
// otherwise Config.Classify is used.
type Classifier interface {
	Classify(err error) ErrorKind
}

// Clock tells the time; tests inject one they can move.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Config configures a Manager. Zero values take Synapse-compatible defaults.
type Config struct {
	// Origin is our server name, the origin of every transaction.
	Origin string
	// MaxPDUs and MaxEDUs limit one transaction (default and maximum: the
	// specification's 50 and 100).
	MaxPDUs, MaxEDUs int
	// BackoffInitial is the first retry interval of a failing destination
	// (default 10 minutes).
	BackoffInitial time.Duration
	// BackoffMultiplier grows the interval on each further failure (default 2).
	BackoffMultiplier float64
	// BackoffMax caps the interval (default 7 days).
	BackoffMax time.Duration
	// JitterMin and JitterMax bound the random factor applied to each interval
	// (default 0.8 and 1.4), so destinations that failed together do not all
	// come back in the same second.
	JitterMin, JitterMax float64
	// WakeupsPerSecond paces catch-up wake-ups (default 5): thousands of
	// destinations due at once do not open thousands of connections at once.
	WakeupsPerSecond float64
	// RetryAttempts is how many times a transaction failing with KindRetry is
	// sent again, with the same transaction id, before the destination is
	// backed off (default 1; -1 for none).
	RetryAttempts int
	// RetryDelay is the pause before such a retry (default 5 s).
	RetryDelay time.Duration
	// CatchUpBatch is how many rooms one catch-up query fetches (default 50).
	CatchUpBatch int
	// StoreAttempts is how many times a failed Store write is tried before the
	// Manager's Run fails (default 5), StoreRetryDelay the first pause (doubling;
	// default 200 ms).
	StoreAttempts   int
	StoreRetryDelay time.Duration
	// Classify says what a Send error means when the Transport is not a
	// Classifier (default: every error is KindRetry).
	Classify func(error) ErrorKind
	// Jitter returns a uniform random number in [0, 1) (default math/rand/v2).
	Jitter func() float64
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.MaxPDUs == 0 {
		c.MaxPDUs = txn.MaxPDUs
	}
	if c.MaxEDUs == 0 {
		c.MaxEDUs = txn.MaxEDUs
	}
	def(&c.BackoffInitial, 10*time.Minute)
	def(&c.BackoffMax, 7*24*time.Hour)
	def(&c.RetryDelay, 5*time.Second)
	def(&c.StoreRetryDelay, 200*time.Millisecond)
	if c.BackoffMultiplier == 0 {
		c.BackoffMultiplier = 2
	}
	if c.JitterMin == 0 && c.JitterMax == 0 {
		c.JitterMin, c.JitterMax = 0.8, 1.4
	}
	if c.WakeupsPerSecond == 0 {
		c.WakeupsPerSecond = 5
	}
	if c.RetryAttempts == 0 {
		c.RetryAttempts = 1
	}
	if c.RetryAttempts < 0 {
		c.RetryAttempts = 0
	}
	if c.CatchUpBatch == 0 {
		c.CatchUpBatch = 50
	}
	if c.StoreAttempts == 0 {
		c.StoreAttempts = 5
	}
	if c.Classify == nil {
		c.Classify = func(error) ErrorKind { return KindRetry }
	}
	return c
}

// Validate reports every setting that cannot work, after defaults.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.Origin == "" {
		errs = append(errs, errors.New("origin is required"))
	}
	if c.MaxPDUs < 0 || c.MaxPDUs > txn.MaxPDUs || c.MaxEDUs < 0 || c.MaxEDUs > txn.MaxEDUs {
		errs = append(errs, fmt.Errorf("transaction limits must be within 1..%d PDUs and 1..%d EDUs", txn.MaxPDUs, txn.MaxEDUs))
	}
	if c.BackoffInitial < 0 || c.BackoffMax < c.BackoffInitial {
		errs = append(errs, fmt.Errorf("backoff: initial %s must be positive and at most the maximum %s", c.BackoffInitial, c.BackoffMax))
	}
	if c.BackoffMultiplier < 1 {
		errs = append(errs, fmt.Errorf("backoff multiplier %g must be at least 1", c.BackoffMultiplier))
	}
	if c.JitterMin <= 0 || c.JitterMax < c.JitterMin {
		errs = append(errs, fmt.Errorf("jitter range [%g, %g] must be positive and ordered", c.JitterMin, c.JitterMax))
	}
	if c.WakeupsPerSecond < 0 {
		errs = append(errs, errors.New("wake-ups per second must be positive"))
	}
	if c.RetryDelay < 0 || c.StoreRetryDelay < 0 || c.CatchUpBatch < 0 || c.StoreAttempts < 0 {
		errs = append(errs, errors.New("delays and counts must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("federation queue: %w", err)
	}
	return nil
}
