package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fedpipe/fedpipe/consumers/sender"
)

// Destination is one destination in Synapse's federation admin API, plus
// fedpipe's paused and retry_next_ts (fields Synapse's scripts ignore).
type Destination struct {
	Destination                  string `json:"destination"`
	RetryLastTS                  int64  `json:"retry_last_ts"`
	RetryInterval                int64  `json:"retry_interval"`
	FailureTS                    *int64 `json:"failure_ts"`
	LastSuccessfulStreamOrdering *int64 `json:"last_successful_stream_ordering"`
	Paused                       bool   `json:"paused"`
	RetryNextTS                  int64  `json:"retry_next_ts"`
}

// destinationOrders are Synapse's order_by values and their columns.
var destinationOrders = map[string]string{
	"destination":                     "destination",
	"retry_last_ts":                   "retry_last_ts",
	"retry_interval":                  "retry_interval_ms",
	"failure_ts":                      "failure_ts",
	"last_successful_stream_ordering": "last_successful_position",
}

// knownDestinations is every destination the sender has state for: a row in
// sender_destinations (any transaction attempted) or catch-up waiting.
const knownDestinations = `(SELECT destination, retry_last_ts, retry_interval_ms, failure_ts, last_successful_position, paused, next_attempt_ms
	FROM sender_destinations
	UNION ALL
	SELECT DISTINCT c.destination, 0, 0, NULL::bigint, NULL::bigint, false, 0 FROM sender_catchup c
	WHERE NOT EXISTS (SELECT 1 FROM sender_destinations d WHERE d.destination = c.destination)) AS known`

// page parses Synapse's from and limit (non-negative integers, defaults 0
// and 100).
func page(r *http.Request) (from, limit int64, err error) {
	from, limit = 0, 100
	for _, p := range []struct {
		name string
		v    *int64
	}{{"from", &from}, {"limit", &limit}} {
		s := r.URL.Query().Get(p.name)
		if s == "" {
			continue
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, 0, badParam("Query parameter %q must be an integer.", p.name)
		}
		if n < 0 {
			return 0, 0, badParam("Query parameter %s must be a string representing a positive integer.", p.name)
		}
		*p.v = n
	}
	return from, limit, nil
}

// direction parses Synapse's dir (f or b, default f).
func direction(r *http.Request) (string, error) {
	switch r.URL.Query().Get("dir") {
	case "", "f":
		return "ASC", nil
	case "b":
		return "DESC", nil
	default:
		return "", badParam(`Query parameter "dir" must be one of ["b", "f"]`)
	}
}

// GET /_synapse/admin/v1/federation/destinations
func (s *Server) listDestinations(w http.ResponseWriter, r *http.Request) error {
	from, limit, err := page(r)
	if err != nil {
		return err
	}
	orderBy := r.URL.Query().Get("order_by")
	if orderBy == "" {
		orderBy = "destination"
	}
	col, ok := destinationOrders[orderBy]
	if !ok {
		names := make([]string, 0, len(destinationOrders))
		for n := range destinationOrders {
			names = append(names, strconv.Quote(n))
		}
		slices.Sort(names)
		return badParam("Query parameter \"order_by\" must be one of %v", names)
	}
	dir, err := direction(r)
	if err != nil {
		return err
	}
	// Synapse's destination filter: a case-insensitive substring.
	filter := "%" + likeEscape(r.URL.Query().Get("destination")) + "%"
	ctx := r.Context()
	var total int64
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM "+knownDestinations+" WHERE lower(destination) LIKE lower($1)", filter).Scan(&total); err != nil {
		return fmt.Errorf("counting destinations: %w", err)
	}
	rows, err := s.pool.Query(ctx, "SELECT destination, retry_last_ts, retry_interval_ms, failure_ts, last_successful_position, paused, next_attempt_ms FROM "+
		knownDestinations+" WHERE lower(destination) LIKE lower($1) ORDER BY "+col+" "+dir+", destination ASC OFFSET $2 LIMIT $3", filter, from, limit)
	if err != nil {
		return fmt.Errorf("listing destinations: %w", err)
	}
	list, err := pgx.CollectRows(rows, scanDestination)
	if err != nil {
		return fmt.Errorf("listing destinations: %w", err)
	}
	resp := map[string]any{"destinations": list, "total": total}
	if list == nil {
		resp["destinations"] = []Destination{}
	}
	if from+limit < total {
		resp["next_token"] = strconv.FormatInt(from+int64(len(list)), 10)
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func scanDestination(row pgx.CollectableRow) (Destination, error) {
	var d Destination
	err := row.Scan(&d.Destination, &d.RetryLastTS, &d.RetryInterval, &d.FailureTS, &d.LastSuccessfulStreamOrdering, &d.Paused, &d.RetryNextTS)
	return d, err
}

func likeEscape(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		if s[i] == '%' || s[i] == '_' || s[i] == '\\' {
			b = append(b, '\\')
		}
		b = append(b, s[i])
	}
	return string(b)
}

// destination reads one known destination, or M_NOT_FOUND.
func (s *Server) destination(ctx context.Context, dest string) (Destination, error) {
	rows, err := s.pool.Query(ctx, "SELECT destination, retry_last_ts, retry_interval_ms, failure_ts, last_successful_position, paused, next_attempt_ms FROM "+
		knownDestinations+" WHERE destination = $1", dest)
	if err != nil {
		return Destination{}, fmt.Errorf("reading destination %s: %w", dest, err)
	}
	d, err := pgx.CollectExactlyOneRow(rows, scanDestination)
	if errors.Is(err, pgx.ErrNoRows) {
		return Destination{}, notFound("Unknown destination")
	}
	if err != nil {
		return Destination{}, fmt.Errorf("reading destination %s: %w", dest, err)
	}
	return d, nil
}

// GET /_synapse/admin/v1/federation/destinations/{destination}
func (s *Server) getDestination(w http.ResponseWriter, r *http.Request) error {
	d, err := s.destination(r.Context(), r.PathValue("destination"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, d)
	return nil
}

// GET /_synapse/admin/v1/federation/destinations/{destination}/rooms: the
// rooms the destination accepted an event of (sender_destination_rooms) or
// has one waiting in for catch-up, each with the later stream position, as
// Synapse lists its destination_rooms.
func (s *Server) destinationRooms(w http.ResponseWriter, r *http.Request) error {
	dest := r.PathValue("destination")
	if _, err := s.destination(r.Context(), dest); err != nil {
		return err
	}
	from, limit, err := page(r)
	if err != nil {
		return err
	}
	dir, err := direction(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	// The rooms it accepted something of or has an event waiting in, each
	// with the later of the two positions (Synapse's destination_rooms).
	const roomsOf = `(SELECT room_id, max(position) AS position FROM (
			SELECT room_id, position FROM sender_catchup WHERE destination = $1
			UNION ALL SELECT room_id, acked_position FROM sender_destination_rooms WHERE destination = $1) r GROUP BY room_id) rooms`
	var total int64
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM "+roomsOf, dest).Scan(&total); err != nil {
		return fmt.Errorf("counting the rooms of %s: %w", dest, err)
	}
	type room struct {
		RoomID         string `json:"room_id"`
		StreamOrdering int64  `json:"stream_ordering"`
	}
	rows, err := s.pool.Query(ctx, "SELECT room_id, position FROM "+roomsOf+" ORDER BY room_id "+dir+" OFFSET $2 LIMIT $3", dest, from, limit)
	if err != nil {
		return fmt.Errorf("listing the rooms of %s: %w", dest, err)
	}
	rooms, err := pgx.CollectRows(rows, pgx.RowToStructByPos[room])
	if err != nil {
		return fmt.Errorf("listing the rooms of %s: %w", dest, err)
	}
	if rooms == nil {
		rooms = []room{}
	}
	resp := map[string]any{"rooms": rooms, "total": total}
	if from+limit < total {
		resp["next_token"] = strconv.FormatInt(from+int64(len(rooms)), 10)
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// POST /_synapse/admin/v1/federation/destinations/{destination}/reset_connection:
// clears the backoff and tells the member owning the destination to try it now.
func (s *Server) resetConnection(w http.ResponseWriter, r *http.Request) error {
	dest := r.PathValue("destination")
	d, err := s.destination(r.Context(), dest)
	if err != nil {
		return err
	}
	if d.RetryInterval == 0 && d.RetryLastTS == 0 && d.RetryNextTS == 0 {
		return &apiError{http.StatusBadRequest, "M_UNKNOWN", "The retry timing does not need to be reset for this destination."}
	}
	err = s.change(r.Context(), dest, sender.OpReset, `UPDATE sender_destinations SET retry_interval_ms = 0, next_attempt_ms = 0, failure_ts = NULL,
		retry_last_ts = 0, updated_at = now() WHERE destination = $1`)
	if err != nil {
		return err
	}
	s.m.actions.WithLabelValues("reset_connection").Inc()
	s.log.Info("destination backoff reset by an operator", "destination", dest)
	writeJSON(w, http.StatusOK, map[string]any{})
	return nil
}

// POST /_fedpipe/admin/v1/federation/destinations/{destination}/pause|resume
func (s *Server) pause(paused bool) func(http.ResponseWriter, *http.Request) error {
	op, action := sender.OpResume, "resume"
	if paused {
		op, action = sender.OpPause, "pause"
	}
	return func(w http.ResponseWriter, r *http.Request) error {
		dest := r.PathValue("destination")
		if _, err := s.destination(r.Context(), dest); err != nil {
			return err
		}
		// Upserted: a destination known only by its catch-up has no row yet.
		err := s.change(r.Context(), dest, op, `INSERT INTO sender_destinations (destination, paused) VALUES ($1, `+strconv.FormatBool(paused)+`)
			ON CONFLICT (destination) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()`)
		if err != nil {
			return err
		}
		s.m.actions.WithLabelValues(action).Inc()
		s.log.Info("destination "+action+"d by an operator", "destination", dest)
		writeJSON(w, http.StatusOK, map[string]any{"destination": dest, "paused": paused})
		return nil
	}
}

// change runs update for dest and signals op to the sender members in the
// same transaction: they hear it once the change is visible.
func (s *Server) change(ctx context.Context, dest, op, update string) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("%s of %s: %w", op, dest, err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if _, err := tx.Exec(ctx, update, dest); err != nil {
		return fmt.Errorf("%s of %s: %w", op, dest, err)
	}
	if err := sender.Signal(ctx, tx, op, dest); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("%s of %s: %w", op, dest, err)
	}
	return nil
}

// ResendRequest is the body of POST …/destinations/{destination}/resend:
// exactly one of from_position (a stream position) and from_ts (ms since the
// epoch, the time events were stored).
type ResendRequest struct {
	FromPosition *int64 `json:"from_position"`
	FromTS       *int64 `json:"from_ts"`
}

// POST /_fedpipe/admin/v1/federation/destinations/{destination}/resend: a
// remote that lost data gets, through catch-up (paced, one room per
// transaction), the latest of our events since the position or time in
// every room it is joined to; it fetches the earlier ones itself.
func (s *Server) resend(w http.ResponseWriter, r *http.Request) error {
	dest := r.PathValue("destination")
	if _, err := s.destination(r.Context(), dest); err != nil {
		return err
	}
	var req ResendRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return &apiError{http.StatusBadRequest, "M_BAD_JSON", "Invalid request body: " + err.Error()}
	}
	if (req.FromPosition == nil) == (req.FromTS == nil) {
		return &apiError{http.StatusBadRequest, "M_INVALID_PARAM", "give exactly one of from_position and from_ts"}
	}
	from := int64(0)
	switch {
	case req.FromPosition != nil && *req.FromPosition >= 0:
		from = *req.FromPosition
	case req.FromTS != nil && *req.FromTS >= 0:
		pos, err := sender.PositionAt(r.Context(), s.pool, time.UnixMilli(*req.FromTS))
		if err != nil {
			return err
		}
		from = pos
	default:
		return &apiError{http.StatusBadRequest, "M_INVALID_PARAM", "from_position and from_ts must not be negative"}
	}
	rooms, err := sender.Resend(r.Context(), s.pool, dest, s.cfg.ServerName, from)
	if err != nil {
		return err
	}
	s.m.actions.WithLabelValues("resend").Inc()
	s.log.Info("destination to be sent again from a position by an operator", "destination", dest, "from_position", from, "rooms", rooms)
	writeJSON(w, http.StatusOK, map[string]any{"destination": dest, "from_position": from, "rooms": rooms})
	return nil
}
