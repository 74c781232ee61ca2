// Package admin is fedpipe's operations HTTP API and status page, served on the
// admin listener beside /metrics:
//
//   - Synapse's federation admin API (/_synapse/admin/v1/federation/...), with
//     Synapse's paths, parameters, fields and error shapes, so scripts written
//     for Synapse work against fedpipe;
//   - fedpipe's own calls under /_fedpipe/admin/v1/: pause and resume a
//     destination, wait for a stream position to be routed, dead letters
//     (count, latest, re-drive) and the status behind the page;
//   - the status page at /;
//   - Go's profiles of the process under /debug/pprof/ (net/http/pprof).
//
// Every route but /metrics wants the bearer token admin.token when one is set
// (Synapse's M_MISSING_TOKEN and M_UNKNOWN_TOKEN otherwise); the configuration
// refuses an admin listener off loopback without one.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/consumers/router"
	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/internal/httpmux"
	"github.com/fedpipe/fedpipe/internal/kafkaio"
)

// Group is a consumer group the status page shows.
type Group struct {
	ID     string
	Topics []string
}

// Config configures the admin API.
type Config struct {
	// Token is the bearer token callers must present; empty: none (loopback only,
	// which internal/config enforces).
	Token string
	// Brokers are the Kafka bootstrap brokers.
	Brokers []string
	// Stages are the stages this process runs, for the status page.
	Stages []string
	// Instance names this process.
	Instance string
	// ServerName is our server name: a resend sends our events only.
	ServerName string
	// Groups are the consumer groups shown on the status page.
	Groups []Group
	// DeadLetterTopic is <prefix>.deadletter.
	DeadLetterTopic string
	// RedriveTopics are the topics a dead letter may be re-driven to (its
	// source_topic header must name one).
	RedriveTopics []string
	// RoomTopic and RouterGroup are what wait-for-position waits on.
	RoomTopic   string
	RouterGroup string
	// StallAfter is the stall threshold of the groups (kafka.stall_after).
	// Default runtime.DefaultStallAfter (1m), the consumer runtime's;
	// negative: the page judges only whether partitions move.
	StallAfter time.Duration
	// SampleInterval is how often the groups are sampled to tell which
	// partitions move. Default (zero or negative) 5s.
	SampleInterval time.Duration
	// MaxWait bounds wait_for_position's timeout. Default (zero or
	// negative) 5m.
	MaxWait time.Duration
}

// The defaults of Config's fields.
const (
	defaultStallAfter     = runtime.DefaultStallAfter
	defaultSampleInterval = 5 * time.Second
	defaultMaxWait        = 5 * time.Minute
)

// Validate fills the defaults of zero fields and reports every field that is
// missing, each by name.
func (c *Config) Validate() error {
	if c.StallAfter == 0 {
		c.StallAfter = defaultStallAfter
	}
	if c.SampleInterval <= 0 {
		c.SampleInterval = defaultSampleInterval
	}
	if c.MaxWait <= 0 {
		c.MaxWait = defaultMaxWait
	}
	var errs []error
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"Brokers", len(c.Brokers) > 0},
		{"DeadLetterTopic", c.DeadLetterTopic != ""},
		{"RoomTopic", c.RoomTopic != ""},
		{"RouterGroup", c.RouterGroup != ""},
	} {
		if !f.set {
			errs = append(errs, fmt.Errorf("admin: %s must be set", f.name))
		}
	}
	return errors.Join(errs...)
}

// Server is the admin API. Run samples the groups; Handler serves.
type Server struct {
	cfg      Config
	pool     *pgxpool.Pool
	client   *kafka.Client
	writer   *kafka.Writer
	barrier  *router.Barrier
	progress *runtime.Progress
	log      *slog.Logger
	started  time.Time
	m        *metrics
}

type metrics struct {
	requests *prometheus.CounterVec
	redriven *prometheus.CounterVec
	actions  *prometheus.CounterVec
}

// New returns the admin API. Close releases its Kafka writer.
func New(cfg Config, pool *pgxpool.Pool, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if pool == nil || log == nil {
		return nil, errors.New("admin: pool and logger are required")
	}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedpipe_admin_requests_total", Help: "Admin API requests, by route and status code."}, []string{"route", "code"}),
		redriven: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedpipe_admin_deadletters_redriven_total", Help: "Dead letters written back to their source topic, by topic."}, []string{"topic"}),
		actions:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedpipe_admin_destination_actions_total", Help: "Operator actions on destinations (reset_connection, pause, resume)."}, []string{"action"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.redriven, m.actions} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering the admin API's metrics: %w", err)
		}
	}
	stallAfter := cfg.StallAfter
	if stallAfter < 0 { // the watch is off: partitions are never judged stalled
		stallAfter = time.Duration(1<<63 - 1)
	}
	return &Server{
		cfg:      cfg,
		pool:     pool,
		client:   &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Timeout: 10 * time.Second},
		writer:   kafkaio.NewWriter(cfg.Brokers, ""),
		barrier:  router.NewBarrier(cfg.Brokers, cfg.RouterGroup, cfg.RoomTopic, 20*time.Millisecond),
		progress: runtime.NewProgress(stallAfter),
		log:      log,
		started:  time.Now(),
		m:        m,
	}, nil
}

// Run samples every group each SampleInterval until ctx ends, so the page can
// tell a moving partition from a stalled one even when nobody is looking. A
// failed sample is logged and retried at the next tick.
func (s *Server) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.SampleInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if _, err := s.groups(ctx); err != nil && ctx.Err() == nil {
			s.log.Debug("sampling the consumer groups", "err", err)
		}
	}
}

// Close releases the re-drive writer.
func (s *Server) Close() error {
	if err := s.writer.Close(); err != nil {
		return fmt.Errorf("closing the admin API's writer: %w", err)
	}
	return nil
}

// Handler serves every admin route; other paths answer Synapse's 404
// M_UNRECOGNIZED, and a route's path with another method 405
// M_UNRECOGNIZED (with Allow), as Synapse does. The caller mounts /metrics
// beside it. It is an *httpmux.Mux, whose Routes are those served.
func (s *Server) Handler() http.Handler {
	mux := httpmux.New()
	allowed := map[string][]string{} // path pattern → its methods
	route := func(method, path string, h func(http.ResponseWriter, *http.Request) error) {
		pattern := method + " " + path
		mux.Handle(pattern, s.instrument(pattern, s.authenticated(h)))
		allowed[path] = append(allowed[path], method)
	}
	const syn = "/_synapse/admin/v1/federation/destinations"
	route("GET", syn, s.listDestinations)
	route("GET", syn+"/{destination}", s.getDestination)
	route("GET", syn+"/{destination}/rooms", s.destinationRooms)
	route("POST", syn+"/{destination}/reset_connection", s.resetConnection)
	const own = "/_fedpipe/admin/v1"
	route("POST", own+"/federation/destinations/{destination}/pause", s.pause(true))
	route("POST", own+"/federation/destinations/{destination}/resume", s.pause(false))
	route("POST", own+"/federation/destinations/{destination}/resend", s.resend)
	route("GET", own+"/wait_for_position", s.waitForPosition)
	route("GET", own+"/deadletters", s.deadLetters)
	route("POST", own+"/deadletters/redrive", s.redrive)
	route("GET", own+"/status", s.statusJSON)
	route("GET", "/debug/pprof/{profile}", s.profile)
	route("GET", "/{$}", s.page)
	paths := http.NewServeMux() // a route's path asked with another method
	for path, methods := range allowed {
		allow := strings.Join(methods, ", ")
		paths.HandleFunc(path, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Allow", allow)
			writeError(w, &apiError{http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "Unrecognized request: use " + allow})
		})
	}
	mux.Handle("/", s.instrument("unrecognized", func(w http.ResponseWriter, r *http.Request) {
		if h, pattern := paths.Handler(r); pattern != "" {
			h.ServeHTTP(w, r)
			return
		}
		writeError(w, &apiError{http.StatusNotFound, "M_UNRECOGNIZED", "Unrecognized request"})
	}))
	return mux
}

// apiError is an error answered with Synapse's shape {"errcode","error"}.
type apiError struct {
	status  int
	errcode string
	msg     string
}

func (e *apiError) Error() string { return e.msg }

func badParam(format string, args ...any) error {
	return &apiError{http.StatusBadRequest, "M_INVALID_PARAM", fmt.Sprintf(format, args...)}
}

func notFound(msg string) error { return &apiError{http.StatusNotFound, "M_NOT_FOUND", msg} }

func writeError(w http.ResponseWriter, e *apiError) {
	writeJSON(w, e.status, map[string]string{"errcode": e.errcode, "error": e.msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// authenticated checks the bearer token, from the Authorization header or,
// as Synapse also accepts (and a browser opening the status page needs), the
// access_token query parameter; then runs h and answers its error.
func (s *Server) authenticated(h func(http.ResponseWriter, *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.Token != "" {
			tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok {
				tok = r.URL.Query().Get("access_token")
			}
			switch {
			case tok == "":
				writeError(w, &apiError{http.StatusUnauthorized, "M_MISSING_TOKEN", "Missing access token"})
				return
			case subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.Token)) != 1:
				writeError(w, &apiError{http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Invalid access token passed."})
				return
			}
		}
		err := h(w, r)
		if err == nil {
			return
		}
		var ae *apiError
		if errors.As(err, &ae) {
			writeError(w, ae)
			return
		}
		if r.Context().Err() != nil {
			return // the caller went away
		}
		s.log.Error("admin request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, &apiError{http.StatusInternalServerError, "M_UNKNOWN", "Internal server error: " + err.Error()})
	}
}

// statusRecorder remembers the status code for the request counter.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

func (s *Server) instrument(route string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h(rec, r)
		s.m.requests.WithLabelValues(route, fmt.Sprint(rec.code)).Inc()
	})
}
