package relay

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// visibleUpTo returns a position L such that every row at or below L is
// committed or rolled back. Writers take their xid before their position
// (fedpipe_next_stream_ordering), so every transaction that may own a position
// ≤ L had an xid before L was read. The relay then takes an xid of its own, N,
// with a snapshot: the transactions still running are among the snapshot's
// in-progress list and the xids from its xmax up to N (PostgreSQL does not list
// running xids at or above xmax). It waits until all of those are visible to a new snapshot
// (committed or rolled back, and no longer running for anyone).
// Taking an xid costs one per round, and only when there is something new.
func (r *Relay) visibleUpTo(ctx context.Context, published int64) (int64, error) {
	var last int64
	var called bool
	if err := r.pool.QueryRow(ctx, "SELECT last_value, is_called FROM events_stream_seq").Scan(&last, &called); err != nil {
		return 0, fmt.Errorf("reading the stream sequence: %w", err)
	}
	if !called || last <= published {
		return published, nil
	}
	var own, snap string
	if err := r.pool.QueryRow(ctx, "SELECT pg_current_xact_id()::text, pg_current_snapshot()::text").Scan(&own, &snap); err != nil {
		return 0, fmt.Errorf("reading a snapshot: %w", err)
	}
	xip, xmax, err := inProgress(snap)
	if err != nil {
		return 0, err
	}
	next, err := strconv.ParseUint(own, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("unexpected xid %q", own)
	}
	start := time.Now()
	defer func() { r.m.waitingXID.Observe(time.Since(start).Seconds()) }()
	// Most transactions end within milliseconds; a long one (a bulk import, a
	// migration) may hold its position for minutes: check quickly at first, then
	// back off to the poll interval rather than query PostgreSQL 500 times a second.
	pause := 2 * time.Millisecond
	for {
		r.m.xidChecks.Inc()
		var running bool
		// Visible in a fresh snapshot, not merely committed: a transaction is
		// marked committed in the commit log slightly before new snapshots stop
		// seeing it as running, and the rows must be visible to the next query.
		err := r.pool.QueryRow(ctx, `SELECT NOT COALESCE(bool_and(pg_visible_in_snapshot(x, pg_current_snapshot())), true) FROM (
				SELECT unnest($1::text[])::xid8 AS x
				UNION ALL SELECT g::text::xid8 FROM generate_series($2::bigint, $3::bigint) AS g) AS candidates`,
			xip, int64(xmax), int64(next)-1).Scan(&running)
		if err != nil {
			return 0, fmt.Errorf("checking in-progress transactions: %w", err)
		}
		if !running {
			return last, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(pause):
		}
		pause = min(pause*2, max(r.cfg.PollInterval, 2*time.Millisecond))
	}
}

// inProgress parses a pg_snapshot's text form "xmin:xmax:xip,…" into its
// in-progress list and xmax.
func inProgress(snap string) ([]string, uint64, error) {
	parts := strings.Split(snap, ":")
	if len(parts) != 3 {
		return nil, 0, fmt.Errorf("unexpected snapshot %q", snap)
	}
	xmax, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return nil, 0, fmt.Errorf("unexpected snapshot %q", snap)
	}
	if parts[2] == "" {
		return []string{}, xmax, nil
	}
	xs := strings.Split(parts[2], ",")
	for _, x := range xs {
		if _, err := strconv.ParseUint(x, 10, 64); err != nil {
			return nil, 0, fmt.Errorf("unexpected snapshot %q", snap)
		}
	}
	return xs, xmax, nil
}
