package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"
)

// GET /_fedpipe/admin/v1/wait_for_position?stream=events&position=N&timeout=10s
//
// Answers 200 once the router has routed every event up to stream position N:
// the relay has published past N (relay_positions), and then the router's
// group has committed, on every partition of the room topic, the end it had
// at that moment. 504 when timeout (default 10s, at most Config.MaxWait)
// passes first. A caller that persisted an event at N and wants federation to
// have it in hand (the outbound records are written before the router
// commits) waits here.
func (s *Server) waitForPosition(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	if st := q.Get("stream"); st != "events" {
		return badParam(`Query parameter "stream" must be one of ["events"]`)
	}
	pos, err := strconv.ParseInt(q.Get("position"), 10, 64)
	if err != nil || pos < 0 {
		return badParam(`Query parameter "position" must be a non-negative integer`)
	}
	timeout := 10 * time.Second
	if t := q.Get("timeout"); t != "" {
		timeout, err = time.ParseDuration(t)
		if err != nil || timeout <= 0 || timeout > s.cfg.MaxWait {
			return badParam(`Query parameter "timeout" must be a duration (10s, 2m) above 0 and at most %s`, s.cfg.MaxWait)
		}
	}
	started := time.Now()
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	relayed, err := s.waitRelayed(ctx, pos)
	if err == nil {
		err = s.barrier.Wait(ctx)
	}
	switch {
	case err != nil && r.Context().Err() == nil && (ctx.Err() != nil || timedOut(err)):
		return &apiError{http.StatusGatewayTimeout, "FEDPIPE_TIMEOUT",
			fmt.Sprintf("position %d of stream events not routed within %s (relay published up to %d)", pos, timeout, relayed)}
	case err != nil:
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"stream": "events", "position": pos, "relayed": relayed,
		"waited_ms": time.Since(started).Milliseconds()})
	return nil
}

// waitRelayed polls relay_positions until the relay has published position
// pos of the events stream; it returns the relay's position.
func (s *Server) waitRelayed(ctx context.Context, pos int64) (int64, error) {
	var relayed int64
	for {
		err := s.pool.QueryRow(ctx, "SELECT COALESCE((SELECT position FROM relay_positions WHERE stream = 'events'), 0)").Scan(&relayed)
		if err != nil {
			if ctx.Err() != nil {
				return relayed, ctx.Err()
			}
			return relayed, fmt.Errorf("reading the relay's position: %w", err)
		}
		if relayed >= pos {
			return relayed, nil
		}
		select {
		case <-ctx.Done():
			return relayed, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// timedOut reports an I/O deadline: a request to the brokers cut by the
// wait's own deadline may fail a moment before ctx reports it.
func timedOut(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
