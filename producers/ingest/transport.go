package ingest

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fedpipe/fedpipe/producers/outbox"
)

// errorBody is the Matrix-style error answer.
type errorBody struct {
	ErrCode string `json:"errcode"`
	Error   string `json:"error"`
}

func encodeResponse(_ context.Context, w http.ResponseWriter, response any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(response)
}

func writeError(w http.ResponseWriter, status int, errcode, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(errorBody{ErrCode: errcode, Error: msg})
}

// encodeError answers an error of decoding or persisting: client errors name
// the bad field; a database that cannot be reached is 503 so callers retry.
func encodeError(logger *slog.Logger, m *metrics) func(context.Context, error, http.ResponseWriter) {
	return func(ctx context.Context, err error, w http.ResponseWriter) {
		status, errcode, msg := classify(err)
		m.requests.WithLabelValues(strconv.Itoa(status)).Inc()
		if status >= 500 {
			logger.ErrorContext(ctx, "persisting ingested events", "status", status, "err", err)
		}
		writeError(w, status, errcode, msg)
	}
}

func classify(err error) (status int, errcode, msg string) {
	var re *requestError
	var se *outbox.SizeError
	var ve *outbox.ValidationError
	var pgErr *pgconn.PgError
	var connErr *pgconn.ConnectError
	switch {
	case errors.As(err, &re):
		return re.status, re.errcode, re.msg
	case errors.As(err, &se):
		return http.StatusRequestEntityTooLarge, "M_TOO_LARGE", ingestField(se.Field) + ": " + se.Reason
	case errors.As(err, &ve):
		return http.StatusBadRequest, "M_INVALID_PARAM", ingestField(ve.Field) + ": " + ve.Reason
	case errors.As(err, &connErr):
		return http.StatusServiceUnavailable, "M_UNKNOWN", "database unavailable, retry later"
	case errors.As(err, &pgErr) && !unavailableCode(pgErr.Code):
		return http.StatusInternalServerError, "M_UNKNOWN", "database error"
	default:
		// Connection failures, timeouts and shutdown codes: the batch was not
		// persisted and the same request can be sent again.
		return http.StatusServiceUnavailable, "M_UNKNOWN", "database unavailable, retry later"
	}
}

// unavailableCode reports SQLSTATEs after which a retry can succeed:
// connection exceptions, insufficient resources, operator intervention
// (shutdown) and serialization failures.
func unavailableCode(code string) bool {
	return strings.HasPrefix(code, "08") || strings.HasPrefix(code, "53") || strings.HasPrefix(code, "57") ||
		code == "40001" || code == "40P01"
}

// ingestField names an outbox field as the request spells it: the room,
// sender, type and state key come from the PDU.
func ingestField(field string) string {
	prefix, rest, ok := strings.Cut(field, "].")
	if !ok {
		return field
	}
	switch rest {
	case "room_id", "sender", "type", "state_key":
		return prefix + "].pdu." + rest
	}
	return field
}

// authenticate checks the bearer token (when one is configured).
func authenticate(token string, m *metrics, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := r.Header.Get("Authorization")
		switch {
		case got == "":
			m.requests.WithLabelValues("401").Inc()
			writeError(w, http.StatusUnauthorized, "M_MISSING_TOKEN", "Authorization: Bearer <token> required")
		case subtle.ConstantTimeCompare([]byte(got), want) != 1:
			m.requests.WithLabelValues("401").Inc()
			writeError(w, http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "unknown token")
		default:
			next.ServeHTTP(w, r)
		}
	})
}
