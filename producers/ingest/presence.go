package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/go-kit/kit/endpoint"
	httptransport "github.com/go-kit/kit/transport/http"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/federation/presence"
	"github.com/fedpipe/fedpipe/internal/httpmux"
	"github.com/fedpipe/fedpipe/producers/usersync"
	"github.com/fedpipe/fedpipe/schema"
)

// Routes of the presence input, served when Config.UserSync is set.
const (
	UserSyncPath = "/_fedpipe/v1/usersync"
	PresencePath = "/_fedpipe/v1/presence/{userId}"
)

// DefaultMaxUpdates is the default limit on updates per usersync request: one
// record batch of kafkaio's writers.
const DefaultMaxUpdates = 1000

// DefaultPresenceInstance is the instance of set_presence records whose
// request names none.
const DefaultPresenceInstance = "ingest"

// Writer writes records to one topic; *kafka.Writer implements it.
type Writer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// usersyncRequest is a decoded presence input request: records ready to write.
type usersyncRequest struct {
	msgs     []kafka.Message
	response usersyncResponse
}

// usersyncResponse answers POST UserSyncPath; PUT PresencePath answers {}.
type usersyncResponse struct {
	Written *int `json:"written,omitempty"`
}

// wireUpdate is one element of a usersync request's "updates".
type wireUpdate struct {
	Kind      *string `json:"kind"`
	UserID    *string `json:"user_id"`
	Syncing   *bool   `json:"syncing"`
	Presence  *string `json:"presence"`
	StatusMsg *string `json:"status_msg"`
}

// wirePresence is the body of PUT PresencePath.
type wirePresence struct {
	Presence  *string `json:"presence"`
	StatusMsg *string `json:"status_msg"`
	Instance  *string `json:"instance"`
}

// registerPresence serves the presence input routes on mux.
func registerPresence(mux *httpmux.Mux, cfg Config, logger *slog.Logger, m *metrics) {
	notAllowed := func(method string) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Allow", method)
			writeError(w, http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "only "+method+" is allowed")
		}
	}
	mux.HandleFunc(UserSyncPath, notAllowed(http.MethodPost))
	mux.HandleFunc(PresencePath, notAllowed(http.MethodPut))
	if cfg.UserSync == nil {
		off := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			m.requests.WithLabelValues("404").Inc()
			writeError(w, http.StatusNotFound, "M_UNRECOGNIZED", "presence input is not enabled on this ingest server (it has no usersync writer)")
		})
		mux.Handle("POST "+UserSyncPath, authenticate(cfg.Token, m, off))
		mux.Handle("PUT "+PresencePath, authenticate(cfg.Token, m, off))
		return
	}
	ep := makeWriteEndpoint(cfg.UserSync, m.usersync, m)
	opts := []httptransport.ServerOption{httptransport.ServerErrorEncoder(encodePresenceError(logger, m))}
	mux.Handle("POST "+UserSyncPath, authenticate(cfg.Token, m, httptransport.NewServer(ep, decodeUserSync(cfg), encodeResponse, opts...)))
	mux.Handle("PUT "+PresencePath, authenticate(cfg.Token, m, httptransport.NewServer(ep, decodePresence(cfg), encodeResponse, opts...)))
}

// errNotWritten: the broker did not acknowledge the records; the request can
// be sent again (presence input is state, so a repeat is harmless).
var errNotWritten = errors.New("not written")

// makeWriteEndpoint writes a request's records in one synchronous call (all
// share one key, so they go to one partition in request order), counting
// them in written.
func makeWriteEndpoint(w Writer, written prometheus.Counter, m *metrics) endpoint.Endpoint {
	return func(ctx context.Context, request any) (any, error) {
		req := request.(usersyncRequest)
		if len(req.msgs) > 0 {
			if err := w.WriteMessages(ctx, req.msgs...); err != nil {
				return nil, fmt.Errorf("%w: writing %d records of instance %s: %v", errNotWritten, len(req.msgs), req.msgs[0].Key, err)
			}
		}
		written.Add(float64(len(req.msgs)))
		m.requests.WithLabelValues("200").Inc()
		return req.response, nil
	}
}

// encodePresenceError answers client errors as decoded and anything else as
// 503, so callers retry.
func encodePresenceError(logger *slog.Logger, m *metrics) func(context.Context, error, http.ResponseWriter) {
	return func(ctx context.Context, err error, w http.ResponseWriter) {
		var re *requestError
		if errors.As(err, &re) {
			m.requests.WithLabelValues(strconv.Itoa(re.status)).Inc()
			writeError(w, re.status, re.errcode, re.msg)
			return
		}
		m.requests.WithLabelValues("503").Inc()
		logger.ErrorContext(ctx, "writing ephemeral input to the broker", "err", err)
		writeError(w, http.StatusServiceUnavailable, "M_UNKNOWN", "not written: the broker is unavailable, retry later")
	}
}

func invalid(field, format string, args ...any) error {
	return &requestError{http.StatusBadRequest, "M_INVALID_PARAM", field + ": " + fmt.Sprintf(format, args...)}
}

// readBody reads a body of at most limit bytes.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, tooLarge(limit)
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, tooLarge(limit)
		}
		return nil, &requestError{http.StatusBadRequest, "M_BAD_JSON", "reading the body: " + err.Error()}
	}
	return body, nil
}

// decodeUserSync reads POST UserSyncPath:
//
//	{"instance": "sync1", "updates": [{"kind": "user_sync", "user_id": "@a:hs", "syncing": true}, ...]}
//
// and checks every update before anything is written.
func decodeUserSync(cfg Config) httptransport.DecodeRequestFunc {
	return func(_ context.Context, r *http.Request) (any, error) {
		body, err := readBody(r, cfg.MaxBodyBytes)
		if err != nil {
			return nil, err
		}
		var top struct {
			Instance *string           `json:"instance"`
			Updates  []json.RawMessage `json:"updates"`
		}
		if err := strictUnmarshal(body, &top); err != nil {
			return nil, badJSON("body", "%v", err)
		}
		if err := checkInstance("instance", top.Instance, ""); err != nil {
			return nil, err
		}
		if top.Updates == nil {
			return nil, badJSON("updates", "missing")
		}
		if len(top.Updates) > cfg.MaxUpdates {
			return nil, invalid("updates", "%d updates, at most %d per request", len(top.Updates), cfg.MaxUpdates)
		}
		ts := time.Now().UnixMilli()
		req := usersyncRequest{msgs: make([]kafka.Message, len(top.Updates))}
		for i, raw := range top.Updates {
			field := "updates[" + strconv.Itoa(i) + "]"
			rec, err := decodeUpdate(field, raw, cfg.ServerName)
			if err != nil {
				return nil, err
			}
			rec.Instance, rec.TS = *top.Instance, ts
			if req.msgs[i], err = usersync.Message(rec); err != nil {
				return nil, invalid(field, "%v", err)
			}
		}
		n := len(req.msgs)
		req.response = usersyncResponse{Written: &n}
		return req, nil
	}
}

// decodeUpdate checks one update: the fields its kind needs are there, no
// other field is.
func decodeUpdate(field string, raw json.RawMessage, serverName string) (schema.UserSyncRecord, error) {
	var rec schema.UserSyncRecord
	var u wireUpdate
	if err := strictUnmarshal(raw, &u); err != nil {
		return rec, badJSON(field, "%v", err)
	}
	if u.Kind == nil {
		return rec, badJSON(field+".kind", "missing")
	}
	rec.Kind = *u.Kind
	var needUser, needSyncing, needPresence bool
	switch rec.Kind {
	case schema.KindUserSync:
		needUser, needSyncing = true, true
	case schema.KindUserActive:
		needUser = true
	case schema.KindSetPresence:
		needUser, needPresence = true, true
	case schema.KindInstanceClear, schema.KindInstanceAlive:
	default:
		return rec, invalid(field+".kind", "%q is not user_sync, user_active, set_presence, instance_clear or instance_alive", rec.Kind)
	}
	if err := only(field, rec.Kind, "user_id", needUser, u.UserID != nil); err != nil {
		return rec, err
	}
	if err := only(field, rec.Kind, "syncing", needSyncing, u.Syncing != nil); err != nil {
		return rec, err
	}
	if err := only(field, rec.Kind, "presence", needPresence, u.Presence != nil); err != nil {
		return rec, err
	}
	if u.StatusMsg != nil && !needPresence {
		return rec, invalid(field+".status_msg", "only set_presence has one")
	}
	if needUser {
		if err := usersync.CheckUserID(*u.UserID, serverName); err != nil {
			return rec, invalid(field+".user_id", "%v", err)
		}
		rec.UserID = *u.UserID
	}
	if needPresence {
		if !presence.Valid(*u.Presence) {
			return rec, invalid(field+".presence", "%q is not online, unavailable or offline", *u.Presence)
		}
		rec.Presence, rec.StatusMsg = *u.Presence, u.StatusMsg
	}
	rec.Syncing = u.Syncing
	return rec, nil
}

// only checks that name is present exactly when the kind needs it.
func only(field, kind, name string, need, present bool) error {
	switch {
	case need && !present:
		return badJSON(field+"."+name, "missing (%s needs it)", kind)
	case !need && present:
		return invalid(field+"."+name, "%s has none", kind)
	}
	return nil
}

// checkInstance checks an instance id; def, when set, stands for a missing one.
func checkInstance(field string, instance *string, def string) error {
	switch {
	case instance == nil && def == "":
		return badJSON(field, "missing")
	case instance != nil && *instance == "":
		return invalid(field, "must not be empty")
	case instance != nil && len(*instance) > 255:
		return invalid(field, "longer than 255 bytes")
	}
	return nil
}

// decodePresence reads PUT PresencePath, which mirrors the client-server
// API's PUT /presence/{userId}/status:
//
//	{"presence": "online", "status_msg": "at lunch", "instance": "sync1"}
//
// A missing or null status_msg clears it; instance defaults to
// DefaultPresenceInstance.
func decodePresence(cfg Config) httptransport.DecodeRequestFunc {
	return func(_ context.Context, r *http.Request) (any, error) {
		userID := r.PathValue("userId")
		if err := usersync.CheckUserID(userID, cfg.ServerName); err != nil {
			return nil, invalid("userId", "%v", err)
		}
		body, err := readBody(r, cfg.MaxBodyBytes)
		if err != nil {
			return nil, err
		}
		var p wirePresence
		if err := strictUnmarshal(body, &p); err != nil {
			return nil, badJSON("body", "%v", err)
		}
		if err := checkInstance("instance", p.Instance, DefaultPresenceInstance); err != nil {
			return nil, err
		}
		instance := DefaultPresenceInstance
		if p.Instance != nil {
			instance = *p.Instance
		}
		if p.Presence == nil {
			return nil, badJSON("presence", "missing")
		}
		if !presence.Valid(*p.Presence) {
			return nil, invalid("presence", "%q is not online, unavailable or offline", *p.Presence)
		}
		msg, err := usersync.Message(schema.UserSyncRecord{Kind: schema.KindSetPresence, Instance: instance, UserID: userID,
			Presence: *p.Presence, StatusMsg: p.StatusMsg, TS: time.Now().UnixMilli()})
		if err != nil {
			return nil, invalid("body", "%v", err)
		}
		return usersyncRequest{msgs: []kafka.Message{msg}, response: usersyncResponse{}}, nil
	}
}
