package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fedpipe/fedpipe/federation/mxid"
)

type wellKnownEntry struct {
	delegated string // "" when there is no valid delegation
	expires   time.Time
}

// wellKnown returns the delegated server name for host, from cache or by
// fetching https://host/.well-known/matrix/server.
func (r *Resolver) wellKnown(ctx context.Context, host string) (string, bool) {
	now := r.now()
	r.mu.Lock()
	e, ok := r.cache[host]
	r.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.delegated, e.delegated != ""
	}
	delegated, ttl, err := r.fetchWellKnown(ctx, host)
	if err != nil {
		r.cfg.Logger.Debug("no well-known delegation", "host", host, "err", err, "cached_for", ttl)
	}
	r.mu.Lock()
	r.cache[host] = wellKnownEntry{delegated: delegated, expires: now.Add(ttl)}
	r.mu.Unlock()
	return delegated, delegated != ""
}

// errDown marks failures to reach the server at all, cached more briefly.
var errDown = errors.New("well-known server unreachable")

// errRedirect marks a redirect refused: too many, or away from https.
var errRedirect = errors.New("well-known redirect refused")

func (r *Resolver) fetchWellKnown(ctx context.Context, host string) (string, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.WellKnownTimeout)
	defer cancel()
	client := *r.http
	redirects := 0
	client.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		redirects++
		if redirects > r.cfg.WellKnownMaxRedirects {
			return fmt.Errorf("%w: more than %d redirects", errRedirect, r.cfg.WellKnownMaxRedirects)
		}
		if req.URL.Scheme != "https" {
			// Never downgrade: an http:// target is fetched without TLS,
			// from anything on the path (cloud metadata services, say).
			return fmt.Errorf("%w: to %s, not https", errRedirect, req.URL.Redacted())
		}
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/.well-known/matrix/server", nil)
	if err != nil {
		return "", r.cfg.WellKnownInvalidCache, err
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, errRedirect) {
			return "", r.cfg.WellKnownInvalidCache, err
		}
		return "", r.cfg.WellKnownDownCache, fmt.Errorf("%w: %w", errDown, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", r.cfg.WellKnownInvalidCache, fmt.Errorf("status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, r.cfg.WellKnownMaxBytes+1))
	if err != nil {
		return "", r.cfg.WellKnownDownCache, fmt.Errorf("%w: reading body: %w", errDown, err)
	}
	if int64(len(body)) > r.cfg.WellKnownMaxBytes {
		return "", r.cfg.WellKnownInvalidCache, fmt.Errorf("body larger than %d bytes", r.cfg.WellKnownMaxBytes)
	}
	server, err := parseWellKnown(body)
	if err != nil {
		return "", r.cfg.WellKnownInvalidCache, err
	}
	return server, r.cacheTTL(resp.Header), nil
}

// errWellKnown marks a .well-known/matrix/server body that delegates nowhere.
var errWellKnown = errors.New("invalid well-known body")

// parseWellKnown reads the delegated server name from a
// /.well-known/matrix/server body: a JSON object whose "m.server" (exactly so
// spelt) is a valid server name.
func parseWellKnown(body []byte) (string, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", fmt.Errorf("%w: invalid JSON: %w", errWellKnown, err)
	}
	raw, ok := doc["m.server"]
	if !ok {
		return "", fmt.Errorf("%w: no m.server", errWellKnown)
	}
	var server string
	if err := json.Unmarshal(raw, &server); err != nil {
		return "", fmt.Errorf("%w: m.server is not a string", errWellKnown)
	}
	if err := mxid.ValidateServerName(server); err != nil {
		return "", fmt.Errorf("%w: m.server: %w", errWellKnown, err)
	}
	return server, nil
}

// cacheTTL applies the response's caching headers within the configured bounds.
func (r *Resolver) cacheTTL(h http.Header) time.Duration {
	ttl := r.cfg.WellKnownCacheDefault
	cc := strings.ToLower(h.Get("Cache-Control"))
	if strings.Contains(cc, "no-store") || strings.Contains(cc, "no-cache") {
		ttl = 0
	} else if i := strings.Index(cc, "max-age="); i >= 0 {
		v := cc[i+len("max-age="):]
		if j := strings.IndexAny(v, ", "); j >= 0 {
			v = v[:j]
		}
		if secs, err := strconv.Atoi(v); err == nil {
			ttl = time.Duration(secs) * time.Second
		}
	} else if exp := h.Get("Expires"); exp != "" {
		if t, err := http.ParseTime(exp); err == nil {
			ttl = t.Sub(r.now())
		}
	}
	return min(max(ttl, r.cfg.WellKnownCacheMin), r.cfg.WellKnownCacheMax)
}
