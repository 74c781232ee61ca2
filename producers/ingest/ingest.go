// Package ingest is the HTTP ingest API for homeservers not written in Go:
// POST /_fedpipe/v1/events persists a batch of events with their state deltas
// in one PostgreSQL transaction (all or nothing) through the outbox library and
// answers their stream positions.
//
// With Config.UserSync set it also takes the presence input of sync workers
// not written in Go (Go ones use producers/usersync), written to
// <prefix>.usersync keyed by the instance:
//
//	POST /_fedpipe/v1/usersync
//	{"instance": "sync1", "updates": [
//	  {"kind": "user_sync", "user_id": "@a:hs", "syncing": true},
//	  {"kind": "user_active", "user_id": "@a:hs"},
//	  {"kind": "set_presence", "user_id": "@a:hs", "presence": "unavailable", "status_msg": "lunch"},
//	  {"kind": "instance_alive"},
//	  {"kind": "instance_clear"}]}
//	→ 200 {"written": 5}
//
// Each update has exactly the fields its kind needs (user_sync: user_id and
// syncing; user_active: user_id; set_presence: user_id, presence and an
// optional status_msg, absent or null to clear it; instance_clear and
// instance_alive: none). Every update is checked before anything is written
// (400 naming the field, e.g. "updates[2].user_id: ..."); the server stamps
// ts; the records are written in order with one synchronous write and the
// answer comes after the broker acknowledged them, or is 503 (some may have
// been written: sending the request again is harmless). The caller counts
// concurrent syncs itself, sends user_sync only on a user's first and last,
// instance_alive well within the presence stage's instance_timeout, and
// instance_clear when it starts and when it stops.
//
//	PUT /_fedpipe/v1/presence/{userId}
//	{"presence": "online", "status_msg": "hi", "instance": "sync1"}
//	→ 200 {}
//
// mirrors the client-server API's PUT /presence/{userId}/status: a
// set_presence record; instance defaults to "ingest". Both routes take the
// same bearer token and body limit as the events route; without
// Config.UserSync they answer 404 M_UNRECOGNIZED.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/go-kit/kit/endpoint"
	httptransport "github.com/go-kit/kit/transport/http"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fedpipe/fedpipe/internal/httpmux"
	"github.com/fedpipe/fedpipe/producers/outbox"
)

// Path is the route of the ingest endpoint.
const Path = "/_fedpipe/v1/events"

// DefaultMaxBodyBytes is the default request body limit: room for a few hundred
// PDUs of the specification's maximum size.
const DefaultMaxBodyBytes = 16 << 20

// DefaultMaxEvents is the default limit on events per request, which bounds the
// length of the transaction a request holds open.
const DefaultMaxEvents = 5000

// Config configures the ingest API.
type Config struct {
	// Token, when set, must be presented as "Authorization: Bearer <token>".
	Token string
	// MaxBodyBytes is the largest request body accepted; larger ones get 413.
	// Default DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// MaxEvents is the most events accepted in one request. Default
	// DefaultMaxEvents.
	MaxEvents int
	// UserSync, when set, serves the presence input routes (UserSyncPath and
	// PresencePath) by writing to <prefix>.usersync through it: a synchronous
	// writer bound to that topic, as kafkaio.NewWriter makes. Nil turns
	// those routes off (404).
	UserSync Writer
	// Typing, when set, serves TypingPath by writing to <prefix>.typing
	// through it (a synchronous writer bound to that topic). Nil: 404.
	Typing Writer
	// ServerName, when set, refuses presence input about users of other
	// servers (the presence stage would dead-letter it) and to-device
	// messages from them, and leaves its own users out of to-device messages.
	ServerName string
	// MaxUpdates is the most updates accepted in one usersync request.
	// Default DefaultMaxUpdates.
	MaxUpdates int
}

// Validate fills the defaults of zero fields and reports every invalid
// field, each by name.
func (c *Config) Validate() error {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxEvents == 0 {
		c.MaxEvents = DefaultMaxEvents
	}
	if c.MaxUpdates == 0 {
		c.MaxUpdates = DefaultMaxUpdates
	}
	var errs []error
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"MaxBodyBytes", c.MaxBodyBytes},
		{"MaxEvents", int64(c.MaxEvents)},
		{"MaxUpdates", int64(c.MaxUpdates)},
	} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("ingest: %s must be positive, got %d", f.name, f.v))
		}
	}
	return errors.Join(errs...)
}

// persistRequest is a decoded request: events ready for the outbox.
type persistRequest struct {
	events []outbox.EventWithDeltas
}

// persistResponse is the body of a successful answer.
type persistResponse struct {
	Positions []int64 `json:"positions"`
}

// makePersistEndpoint persists a request's events in one transaction.
func makePersistEndpoint(pool *pgxpool.Pool) endpoint.Endpoint {
	return func(ctx context.Context, request any) (any, error) {
		req := request.(persistRequest)
		positions, err := outbox.PersistBatch(ctx, pool, req.events)
		if err != nil {
			return replayed(ctx, pool, req.events, err)
		}
		if positions == nil {
			positions = []int64{}
		}
		return persistResponse{Positions: positions}, nil
	}
}

// NewHandler returns the ingest API's HTTP handler, serving Path, and
// UserSyncPath and PresencePath (404 unless cfg.UserSync is set). It is an
// *httpmux.Mux: its Routes are those docs/openapi.yaml documents (cmd/fedpipe's
// OpenAPI test holds them together).
func NewHandler(cfg Config, pool *pgxpool.Pool, logger *slog.Logger, registerer prometheus.Registerer) (http.Handler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if pool == nil || logger == nil || registerer == nil {
		return nil, errors.New("ingest: pool, logger and registerer are required")
	}
	m, err := newMetrics(registerer)
	if err != nil {
		return nil, err
	}
	ep := instrument(m)(makePersistEndpoint(pool))
	server := httptransport.NewServer(ep,
		decodeRequest(cfg),
		encodeResponse,
		httptransport.ServerErrorEncoder(encodeError(logger, m)),
	)
	mux := httpmux.New()
	mux.Handle("POST "+Path, authenticate(cfg.Token, m, server))
	mux.HandleFunc(Path, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "only POST is allowed")
	})
	registerPresence(mux, cfg, logger, m)
	registerTyping(mux, cfg, logger, m)
	toDevice := httptransport.NewServer(makeToDeviceEndpoint(pool, cfg.ServerName, m), decodeToDevice(cfg), encodeResponse,
		httptransport.ServerErrorEncoder(encodeError(logger, m)))
	mux.Handle("POST "+ToDevicePath, authenticate(cfg.Token, m, toDevice))
	deviceLists := httptransport.NewServer(makeDeviceListsEndpoint(pool, cfg.ServerName, m), decodeDeviceLists(cfg), encodeResponse,
		httptransport.ServerErrorEncoder(encodeError(logger, m)))
	mux.Handle("POST "+DeviceListsPath, authenticate(cfg.Token, m, deviceLists))
	receipts := httptransport.NewServer(makeReceiptsEndpoint(pool, cfg.ServerName, m), decodeReceipts(cfg), encodeResponse,
		httptransport.ServerErrorEncoder(encodeError(logger, m)))
	mux.Handle("POST "+ReceiptsPath, authenticate(cfg.Token, m, receipts))
	for _, path := range []string{ToDevicePath, DeviceListsPath, ReceiptsPath} {
		mux.HandleFunc(path, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Allow", http.MethodPost)
			writeError(w, http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "only POST is allowed")
		})
	}
	return mux, nil
}
