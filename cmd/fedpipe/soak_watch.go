package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/fedpipe/fedpipe/internal/testing/loadgen"
)

// progressWatch measures the soak's progress: distinct expected deliveries
// made, and the longest time without a new one while some were outstanding.
type progressWatch struct {
	start        time.Time
	lastProgress time.Time
	delivered    int
	outstanding  int
	longest      time.Duration
	longestAt    time.Duration // when the longest stall ended (or was last seen), since start
}

func newProgressWatch(now time.Time) *progressWatch {
	return &progressWatch{start: now, lastProgress: now}
}

// observe takes a report of the events ingested so far, at now.
func (w *progressWatch) observe(now time.Time, rep loadgen.Report) {
	tot := rep.Totals()
	if tot.Delivered > w.delivered || tot.Delivered == tot.Expected {
		w.lastProgress = now
	}
	w.delivered, w.outstanding = tot.Delivered, tot.Expected-tot.Delivered
	if s := w.stall(now); s > w.longest {
		w.longest, w.longestAt = s, now.Sub(w.start)
	}
}

// stall is how long no delivery was made while some were outstanding.
func (w *progressWatch) stall(now time.Time) time.Duration {
	if w.outstanding == 0 {
		return 0
	}
	return now.Sub(w.lastProgress)
}

// soakVerdict is nil when the run passed: every expected delivery made, nothing
// unexpected, unknown or out of room order, and no stall above bound.
func soakVerdict(rep loadgen.Report, drained bool, longest, bound time.Duration) error {
	var errs []string
	t := rep.Totals()
	if t.Missing > 0 {
		errs = append(errs, fmt.Sprintf("%d expected deliveries missing", t.Missing))
	}
	if t.Unexpected > 0 || t.Unknown > 0 {
		errs = append(errs, fmt.Sprintf("%d unexpected and %d unknown deliveries", t.Unexpected, t.Unknown))
	}
	if t.OutOfOrder > 0 {
		errs = append(errs, fmt.Sprintf("%d deliveries out of room order", t.OutOfOrder))
	}
	if !drained && t.Missing == 0 {
		errs = append(errs, "the deliveries did not complete in time")
	}
	if longest > bound {
		errs = append(errs, fmt.Sprintf("no progress for %s (bound %s)", longest.Round(time.Second), bound))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("soak failed: %s", strings.Join(errs, "; "))
}

// killGaps draws the time each stage process lives before its SIGKILL: after
// a 10–20 s gap, a burst of 0 to 3 more kills 1–5 s apart (the first burst has
// at least 2, so even a short run has restarts in quick succession). The same
// seed gives the same schedule.
func killGaps(seed uint64, kills int) []time.Duration {
	rng := rand.New(rand.NewPCG(seed, 0x50a4))
	between := func(lo, hi float64) time.Duration {
		return time.Duration((lo + rng.Float64()*(hi-lo)) * float64(time.Second)).Round(100 * time.Millisecond)
	}
	gaps := make([]time.Duration, 0, kills)
	for len(gaps) < kills {
		gaps = append(gaps, between(10, 20))
		n := rng.IntN(4)
		if len(gaps) == 1 {
			n = max(n, 2)
		}
		for ; n > 0 && len(gaps) < kills; n-- {
			gaps = append(gaps, between(1, 5))
		}
	}
	return gaps
}

// stalledPartitions returns the fedpipe_consumer_stalled_partitions samples
// above zero on a process's /metrics ("" when none, an error text when unreachable).
func stalledPartitions(ctx context.Context, metricsURL string) string {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "metrics unreachable: " + err.Error()
	}
	defer resp.Body.Close()
	var out []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "fedpipe_consumer_stalled_partitions{") && !strings.HasSuffix(line, " 0") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "; ")
}
