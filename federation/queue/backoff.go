package queue

import "time"

// RetryState is a destination's backoff as the Store keeps it: Synapse's
// retry limiter (the current interval and the next attempt) plus an
// operator's pause. It is a value: fail and succeed return the next state.
type RetryState struct {
	// Interval is the current backoff; zero when the destination is healthy.
	// It stays set after NextAttempt has passed, until a transaction is
	// accepted: the next failure then doubles it.
	Interval time.Duration
	// NextAttempt is when it may be tried again.
	NextAttempt time.Time
	// Paused is set by an operator (loaded, never saved by the queue): the
	// destination is treated as backing off until it is resumed.
	Paused bool
}

// Failing reports whether the destination may not be tried at now: it is
// paused, or backing off until NextAttempt.
func (r RetryState) Failing(now time.Time) bool {
	return r.Paused || (r.Interval > 0 && now.Before(r.NextAttempt))
}

// schedule shapes backoffs: the first interval, its growth, its maximum, and
// the random factor applied to each.
type schedule struct {
	initial, max         time.Duration
	multiplier           float64
	jitterMin, jitterMax float64
}

// fail is the state after an attempt at now failed: the interval is the
// initial one, else the previous one × multiplier up to the maximum, and the
// next attempt is that interval, scaled by a jitter drawn from rnd (in
// [0,1)), after now.
func (r RetryState) fail(s schedule, now time.Time, rnd float64) RetryState {
	interval := s.initial
	if r.Interval > 0 {
		interval = min(time.Duration(float64(r.Interval)*s.multiplier), s.max)
	}
	jitter := s.jitterMin + rnd*(s.jitterMax-s.jitterMin)
	return RetryState{Interval: interval, NextAttempt: now.Add(time.Duration(float64(interval) * jitter)), Paused: r.Paused}
}

// succeed is the state after the destination accepted a transaction: no
// backoff (an operator's pause stays).
func (r RetryState) succeed() RetryState { return RetryState{Paused: r.Paused} }
