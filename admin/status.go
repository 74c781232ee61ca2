package admin

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
)

// Status is what the status page and `fedpipe status` show.
type Status struct {
	Instance string        `json:"instance"`
	Stages   []string      `json:"stages"`
	Started  time.Time     `json:"started"`
	Now      time.Time     `json:"now"`
	Groups   []GroupStatus `json:"groups"`
	// Troubled are the destinations backing off or paused, worst first (the
	// longest backoff, then the oldest failure, then the paused); at most 50.
	Troubled      []TroubledDestination `json:"troubled_destinations"`
	TroubledTotal int64                 `json:"troubled_total"`
	Destinations  int64                 `json:"destinations"`
	DeadLetters   DeadLetterSummary     `json:"deadletters"`
	// Stalls are the stalled partitions of every group.
	Stalls []Stall `json:"stalls"`
	// Errors are the parts that could not be read (the rest is still shown).
	Errors []string `json:"errors"`
}

// TroubledDestination is a destination backing off or paused.
type TroubledDestination struct {
	Destination
	// CatchUpRooms counts the rooms with an event waiting for it.
	CatchUpRooms int64 `json:"catchup_rooms"`
}

// Stall is a stalled partition.
type Stall struct {
	Group      string        `json:"group"`
	Topic      string        `json:"topic"`
	Partition  int           `json:"partition"`
	Lag        int64         `json:"lag"`
	Owner      string        `json:"owner"`
	StalledFor time.Duration `json:"stalled_for_ns"`
}

// Status gathers the status; what cannot be read is named in Errors.
func (s *Server) Status(ctx context.Context) Status {
	st := Status{Instance: s.cfg.Instance, Stages: s.cfg.Stages, Started: s.started, Now: time.Now(),
		Troubled: []TroubledDestination{}, Stalls: []Stall{}, Errors: []string{}}
	groups, err := s.groups(ctx)
	if err != nil {
		st.Errors = append(st.Errors, err.Error())
	}
	st.Groups = groups
	for _, g := range groups {
		for _, p := range g.Partitions {
			if p.State == "stalled" {
				st.Stalls = append(st.Stalls, Stall{Group: g.ID, Topic: p.Topic, Partition: p.Partition, Lag: p.Lag, Owner: p.Owner, StalledFor: p.StalledFor})
			}
		}
	}
	if err := s.troubled(ctx, &st); err != nil {
		st.Errors = append(st.Errors, err.Error())
	}
	dl, err := s.deadLetterSummary(ctx, 10)
	if err != nil {
		st.Errors = append(st.Errors, err.Error())
	}
	st.DeadLetters = dl
	return st
}

func (s *Server) troubled(ctx context.Context, st *Status) error {
	if err := s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM `+knownDestinations+`),
		(SELECT count(*) FROM sender_destinations WHERE retry_interval_ms > 0 OR paused)`).Scan(&st.Destinations, &st.TroubledTotal); err != nil {
		return fmt.Errorf("counting destinations: %w", err)
	}
	rows, err := s.pool.Query(ctx, `SELECT d.destination, d.retry_last_ts, d.retry_interval_ms, d.failure_ts, d.last_successful_position, d.paused, d.next_attempt_ms,
			(SELECT count(*) FROM sender_catchup c WHERE c.destination = d.destination)
		FROM sender_destinations d WHERE d.retry_interval_ms > 0 OR d.paused
		ORDER BY d.retry_interval_ms DESC, d.failure_ts ASC NULLS LAST, d.destination LIMIT 50`)
	if err != nil {
		return fmt.Errorf("listing destinations backing off: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (TroubledDestination, error) {
		var d TroubledDestination
		err := row.Scan(&d.Destination.Destination, &d.RetryLastTS, &d.RetryInterval, &d.FailureTS, &d.LastSuccessfulStreamOrdering, &d.Paused, &d.RetryNextTS, &d.CatchUpRooms)
		return d, err
	})
	if err != nil {
		return fmt.Errorf("listing destinations backing off: %w", err)
	}
	if list != nil {
		st.Troubled = list
	}
	return nil
}

// GET /_fedpipe/admin/v1/status
func (s *Server) statusJSON(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, s.Status(r.Context()))
	return nil
}
