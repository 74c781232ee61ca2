package queue

import (
	"testing"
	"time"
)

func TestRetryStateTransitions(t *testing.T) {
	s := schedule{initial: 10 * time.Minute, multiplier: 2, max: 25 * time.Minute, jitterMin: 0.8, jitterMax: 1.4}
	now := time.Unix(1_700_000_000, 0)
	for _, tc := range []struct {
		name     string
		from     RetryState
		rnd      float64
		interval time.Duration
		next     time.Duration // after now
	}{
		{"a healthy destination starts at the initial interval", RetryState{}, 0.5, 10 * time.Minute, 11 * time.Minute},
		{"the interval doubles", RetryState{Interval: 10 * time.Minute}, 0.5, 20 * time.Minute, 22 * time.Minute},
		{"up to the maximum", RetryState{Interval: 20 * time.Minute}, 0.5, 25 * time.Minute, 27*time.Minute + 30*time.Second},
		{"and stays there", RetryState{Interval: 25 * time.Minute}, 0, 25 * time.Minute, 20 * time.Minute},
		{"jitter reaches towards ×1.4", RetryState{}, 0.999999, 10 * time.Minute, 14 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.from.fail(s, now, tc.rnd)
			if r.Interval != tc.interval || r.NextAttempt.Sub(now).Round(time.Second) != tc.next {
				t.Fatalf("fail from %+v: interval %s, next attempt in %s; want %s, %s", tc.from, r.Interval, r.NextAttempt.Sub(now), tc.interval, tc.next)
			}
			if !r.Failing(now) || !r.Failing(r.NextAttempt.Add(-time.Millisecond)) || r.Failing(r.NextAttempt) {
				t.Fatalf("%+v: failing until its next attempt, and due from then", r)
			}
			if r.succeed() != (RetryState{}) || r.succeed().Failing(now) {
				t.Fatalf("succeed from %+v left %+v", r, r.succeed())
			}
		})
	}
	paused := RetryState{Paused: true}
	if !paused.Failing(now) || !paused.fail(s, now, 0).Paused || !paused.succeed().Paused || !paused.succeed().Failing(now) {
		t.Fatal("an operator's pause is kept by fail and succeed, and a paused destination is failing")
	}
	if due := (RetryState{Interval: time.Hour, NextAttempt: now}); due.Failing(now) || due.Interval == 0 {
		t.Fatal("a due destination keeps its interval (the next failure grows it) but is not failing")
	}
}
