// Package keyserver publishes this server's signing keys where other homeservers
// look for them: GET /_matrix/key/v2/server on the server name, a Server Keys
// object (server_name, valid_until_ts, verify_keys, old_verify_keys) signed by
// every current key, as the server-server specification's "Publishing Keys"
// defines. A receiver of fedpipe's transactions that has not seen its key fetches
// it from there (Synapse does unless a notary holds it), then checks the X-Matrix
// signature with it.
//
// The Handler answers every other /_matrix path with 404 M_UNRECOGNIZED, so a
// server that asks fedpipe for more than it is (events, state, joins) gets a
// clear refusal instead of a connection error.
package keyserver

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/fedpipe/fedpipe/federation/canonicaljson"
	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/federation/signing"
	"github.com/fedpipe/fedpipe/internal/httpmux"
)

// DefaultValidity is how long a published response stays valid (valid_until_ts),
// Synapse's default key_refresh_interval.
const DefaultValidity = 24 * time.Hour

// Config configures a Handler.
type Config struct {
	// ServerName is our server name: the response's server_name.
	ServerName string
	// Keys are the current signing keys, all published and all signing the response.
	Keys []*signing.Key
	// Old are keys no longer used, published under old_verify_keys so that
	// signatures made with them can still be checked.
	Old []OldKey
	// Validity is how far ahead valid_until_ts lies. Default DefaultValidity.
	// Receivers refetch after it, and use the lesser of it and 7 days.
	Validity time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// OldKey is a retired key: its id, public half and when it stopped being used.
type OldKey struct {
	ID      string
	Public  []byte
	Expired time.Time
}

// Validate fills the defaults of zero fields and reports every invalid
// field, each by name.
func (c *Config) Validate() error {
	if c.Validity == 0 {
		c.Validity = DefaultValidity
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	var errs []error
	if err := mxid.ValidateServerName(c.ServerName); err != nil {
		errs = append(errs, fmt.Errorf("ServerName: %w", err))
	}
	if len(c.Keys) == 0 {
		errs = append(errs, errors.New("Keys: no signing key to publish"))
	}
	seen := map[string]bool{}
	for _, k := range c.Keys {
		if seen[k.ID] {
			errs = append(errs, fmt.Errorf("Keys: key %s listed twice", k.ID))
		}
		seen[k.ID] = true
	}
	for _, o := range c.Old {
		if seen[o.ID] {
			errs = append(errs, fmt.Errorf("Old: old key %s is also current", o.ID))
		}
		if len(o.Public) != 32 {
			errs = append(errs, fmt.Errorf("Old: old key %s: public key is %d bytes, want 32", o.ID, len(o.Public)))
		}
	}
	if c.Validity < 0 {
		errs = append(errs, fmt.Errorf("Validity %s is negative", c.Validity))
	}
	return errors.Join(errs...)
}

// verifyKey is one entry of verify_keys or old_verify_keys.
type verifyKey struct {
	Key       string `json:"key"`
	ExpiredTS *int64 `json:"expired_ts,omitempty"`
}

// Response is the signed Server Keys object at now, canonical JSON.
func Response(cfg Config, now time.Time) ([]byte, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b64 := base64.RawStdEncoding.EncodeToString
	obj := struct {
		ServerName    string               `json:"server_name"`
		ValidUntilTS  int64                `json:"valid_until_ts"`
		VerifyKeys    map[string]verifyKey `json:"verify_keys"`
		OldVerifyKeys map[string]verifyKey `json:"old_verify_keys"`
	}{
		ServerName:    cfg.ServerName,
		ValidUntilTS:  now.Add(cfg.Validity).UnixMilli(),
		VerifyKeys:    map[string]verifyKey{},
		OldVerifyKeys: map[string]verifyKey{},
	}
	for _, k := range cfg.Keys {
		obj.VerifyKeys[k.ID] = verifyKey{Key: b64(k.Public())}
	}
	for _, o := range cfg.Old {
		ts := o.Expired.UnixMilli()
		obj.OldVerifyKeys[o.ID] = verifyKey{Key: b64(o.Public), ExpiredTS: &ts}
	}
	body, err := canonicaljson.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encoding the server keys: %w", err)
	}
	for _, k := range cfg.Keys {
		if body, err = signing.SignJSON(cfg.ServerName, k, body); err != nil {
			return nil, fmt.Errorf("signing the server keys with %s: %w", k.ID, err)
		}
	}
	return body, nil
}

// Handler serves the key response, re-signed once half its validity has passed
// so that a fetched copy is never close to expiry. It is safe for concurrent use.
type Handler struct {
	cfg Config
	mux *httpmux.Mux

	mu      sync.Mutex
	body    []byte
	renewAt time.Time
}

// NewHandler returns a Handler for cfg.
func NewHandler(cfg Config) (*Handler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	h := &Handler{cfg: cfg, mux: httpmux.New()}
	h.mux.HandleFunc("GET /_matrix/key/v2/server", h.serveKeys)
	// Deprecated by the specification, but old servers still ask for it;
	// the key id is a hint, the answer is the same.
	h.mux.HandleFunc("GET /_matrix/key/v2/server/{keyId}", h.serveKeys)
	h.mux.HandleFunc("/", unrecognized)
	return h, nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// Routes are the routes h serves ("METHOD path").
func (h *Handler) Routes() []string { return h.mux.Routes() }

func (h *Handler) serveKeys(w http.ResponseWriter, _ *http.Request) {
	body, err := h.current()
	if err != nil {
		// Config was validated: only a broken clock or encoder gets here.
		writeError(w, http.StatusInternalServerError, "M_UNKNOWN", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(body)
}

func (h *Handler) current() ([]byte, error) {
	now := h.cfg.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.body != nil && now.Before(h.renewAt) {
		return h.body, nil
	}
	body, err := Response(h.cfg, now)
	if err != nil {
		return nil, err
	}
	h.body, h.renewAt = body, now.Add(h.cfg.Validity/2)
	return body, nil
}

func unrecognized(w http.ResponseWriter, r *http.Request) {
	writeError(w, http.StatusNotFound, "M_UNRECOGNIZED", "fedpipe serves only its signing keys here, not "+r.Method+" "+r.URL.Path)
}

func writeError(w http.ResponseWriter, status int, errcode, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"errcode": errcode, "error": msg})
}
