package ingest

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	httptransport "github.com/go-kit/kit/transport/http"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/httpmux"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/producers/typing"
)

// TypingPath mirrors the client-server API's PUT /rooms/{roomId}/typing/{userId}:
//
//	PUT /_fedpipe/v1/rooms/{roomId}/typing/{userId}
//	{"typing": true, "timeout": 30000}
//	→ 200 {}
//
// for a local user (of Config.ServerName). timeout (ms) defaults to 30 s and
// is cut to 120 s. The record is written to <prefix>.typing before the
// answer; 503 when the broker does not acknowledge it. Served when
// Config.Typing is set, 404 otherwise.
const TypingPath = "/_fedpipe/v1/rooms/{roomId}/typing/{userId}"

// wireTyping is the body of PUT TypingPath.
type wireTyping struct {
	Typing  *bool `json:"typing"`
	Timeout int64 `json:"timeout"`
}

func registerTyping(mux *httpmux.Mux, cfg Config, logger *slog.Logger, m *metrics) {
	mux.HandleFunc(TypingPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Allow", http.MethodPut)
		writeError(w, http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "only PUT is allowed")
	})
	if cfg.Typing == nil {
		mux.Handle("PUT "+TypingPath, authenticate(cfg.Token, m, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			m.requests.WithLabelValues("404").Inc()
			writeError(w, http.StatusNotFound, "M_UNRECOGNIZED", "typing input is not enabled on this ingest server (it has no typing writer)")
		})))
		return
	}
	ep := makeWriteEndpoint(cfg.Typing, m.typing, m)
	mux.Handle("PUT "+TypingPath, authenticate(cfg.Token, m, httptransport.NewServer(ep, decodeTyping(cfg), encodeResponse,
		httptransport.ServerErrorEncoder(encodePresenceError(logger, m)))))
}

func decodeTyping(cfg Config) httptransport.DecodeRequestFunc {
	return func(_ context.Context, r *http.Request) (any, error) {
		body, err := readBody(r, cfg.MaxBodyBytes)
		if err != nil {
			return nil, err
		}
		var b wireTyping
		if err := strictUnmarshal(body, &b); err != nil {
			return nil, badJSON("body", "%v", err)
		}
		if b.Typing == nil {
			return nil, badJSON("typing", "missing")
		}
		rec, err := typing.Record(cfg.ServerName, r.PathValue("roomId"), r.PathValue("userId"), *b.Typing, time.Duration(b.Timeout)*time.Millisecond, time.Now())
		if err != nil {
			var ve *outbox.ValidationError
			if errors.As(err, &ve) {
				return nil, invalid(ve.Field, "%s", ve.Reason)
			}
			return nil, err
		}
		v, err := rec.Marshal()
		if err != nil {
			return nil, err
		}
		return usersyncRequest{msgs: []kafka.Message{typing.Message(rec, v)}, response: usersyncResponse{}}, nil
	}
}
