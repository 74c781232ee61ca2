// Package client is fedpipe's federation HTTPS client: it resolves destinations
// with package discovery, refuses internal addresses, verifies TLS, signs every
// request with X-Matrix, reuses connections, and sends transactions, returning
// typed errors that say whether to retry, back off or give up.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/fedpipe/fedpipe/federation/discovery"
	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/federation/signing"
	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/federation/xmatrix"
)

// Config configures a Client.
type Config struct {
	// Origin is our server name. Required.
	Origin string
	// CAFile is a PEM file of extra CAs to trust besides the system roots.
	CAFile string
	// RootCAs, when set, replaces the system roots (tests, embedding programs).
	RootCAs *x509.CertPool
	// InsecureSkipVerify turns certificate verification off. Only ever explicit.
	InsecureSkipVerify bool
	// AllowedNetworks are CIDRs allowed although in a denied range.
	AllowedNetworks []string
	// ConnectTimeout bounds a TCP connect plus TLS handshake. Default 10s.
	ConnectTimeout time.Duration
	// RequestTimeout bounds one attempt of a request, body included.
	// Default DefaultRequestTimeout.
	RequestTimeout time.Duration
	// IdleConnTimeout closes pooled connections idle this long. Default 90s.
	IdleConnTimeout time.Duration
	// MaxConnsPerHost limits connections to one destination (1 transaction is in
	// flight per destination, so a small number suffices). Default 4.
	MaxConnsPerHost int
	// MaxResponseBytes limits a response body. Default 4 MiB.
	MaxResponseBytes int64
	// RetriesPerRequest is how many times a transient failure is retried before
	// the error is returned. Default 2.
	RetriesPerRequest int
	// RetryDelay is the first pause between retries (doubling). Default 500ms.
	RetryDelay time.Duration
	// MaxRetryAfter is the longest 429 retry_after_ms honoured within a
	// request. Default 10s.
	MaxRetryAfter time.Duration
}

// DefaultRequestTimeout is Config.RequestTimeout when it is zero.
const DefaultRequestTimeout = 60 * time.Second

// Validate fills the defaults of zero fields and reports every invalid
// field, each by name.
func (c *Config) Validate() error {
	c.fillDefaults()
	var errs []error
	if err := mxid.ValidateServerName(c.Origin); err != nil {
		errs = append(errs, fmt.Errorf("Origin: %w", err))
	}
	if err := checkNetworks(c.AllowedNetworks); err != nil {
		errs = append(errs, err)
	}
	for _, f := range []struct {
		name string
		n    int64
	}{
		{"RetriesPerRequest", int64(c.RetriesPerRequest)},
		{"MaxConnsPerHost", int64(c.MaxConnsPerHost)},
		{"MaxResponseBytes", c.MaxResponseBytes},
	} {
		if f.n < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative, got %d", f.name, f.n))
		}
	}
	return errors.Join(errs...)
}

// fillDefaults is the first half of Validate, for the functions that need a
// Config's defaults but not its Origin (Dialer, NewDiscoveryHTTPClient).
func (c *Config) fillDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.ConnectTimeout, 10*time.Second)
	def(&c.RequestTimeout, DefaultRequestTimeout)
	def(&c.IdleConnTimeout, 90*time.Second)
	def(&c.RetryDelay, 500*time.Millisecond)
	def(&c.MaxRetryAfter, 10*time.Second)
	if c.MaxConnsPerHost == 0 {
		c.MaxConnsPerHost = 4
	}
	if c.MaxResponseBytes == 0 {
		c.MaxResponseBytes = 4 << 20
	}
	if c.RetriesPerRequest == 0 {
		c.RetriesPerRequest = 2
	}
}

// checkNetworks reports every entry of AllowedNetworks that is not a CIDR.
func checkNetworks(networks []string) error {
	var errs []error
	for _, n := range networks {
		if _, _, err := net.ParseCIDR(n); err != nil {
			errs = append(errs, fmt.Errorf("AllowedNetworks: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Client sends signed federation requests. It is safe for concurrent use.
type Client struct {
	cfg      Config
	key      *signing.Key
	resolver *discovery.Resolver
	log      *slog.Logger
	http     *http.Client
	allowed  []*net.IPNet
	tls      *tls.Config
}

type resolutionKey struct{}

// New returns a Client signing with key and resolving with resolver.
func New(cfg Config, key *signing.Key, resolver *discovery.Resolver, logger *slog.Logger) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if key == nil || resolver == nil {
		return nil, errors.New("client needs a signing key and a resolver")
	}
	c := &Client{cfg: cfg, key: key, resolver: resolver, log: logger, allowed: allowedNets(cfg)}
	tlsConf, err := tlsConfig(cfg)
	if err != nil {
		return nil, err
	}
	c.tls = tlsConf
	c.http = &http.Client{
		Transport: &http.Transport{
			DialTLSContext:        c.dialTLS,
			MaxConnsPerHost:       cfg.MaxConnsPerHost,
			MaxIdleConnsPerHost:   cfg.MaxConnsPerHost,
			IdleConnTimeout:       cfg.IdleConnTimeout,
			ResponseHeaderTimeout: cfg.RequestTimeout,
		},
		// Federation requests are never redirected.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c, nil
}

func allowedNets(cfg Config) []*net.IPNet {
	var out []*net.IPNet
	for _, n := range cfg.AllowedNetworks {
		if _, ipn, err := net.ParseCIDR(n); err == nil {
			out = append(out, ipn)
		}
	}
	return out
}

// Dialer returns a dialer that checks every address at dial time, after DNS,
// as the client does: addresses in private, loopback, link-local and other
// internal ranges are refused (ErrDeniedAddress) unless cfg.AllowedNetworks
// allows them.
func Dialer(cfg Config) (*net.Dialer, error) {
	cfg.fillDefaults()
	if err := checkNetworks(cfg.AllowedNetworks); err != nil {
		return nil, err
	}
	c := &Client{allowed: allowedNets(cfg)}
	return &net.Dialer{Timeout: cfg.ConnectTimeout, Control: c.checkAddress}, nil
}

// NewDiscoveryHTTPClient returns the HTTP client for server discovery's
// /.well-known/matrix/server requests (discovery.WithHTTPClient): the
// client's dialer with its address check (Dialer), so neither a server name
// nor a redirect reaches an internal address; its TLS roots; no proxy from the
// environment (a proxy would dial on our behalf, unchecked). The resolver
// itself refuses redirects away from https.
func NewDiscoveryHTTPClient(cfg Config) (*http.Client, error) {
	cfg.fillDefaults()
	d, err := Dialer(cfg)
	if err != nil {
		return nil, err
	}
	tlsConf, err := tlsConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: &http.Transport{
		DialContext:           d.DialContext,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   cfg.ConnectTimeout,
		ResponseHeaderTimeout: cfg.RequestTimeout,
		IdleConnTimeout:       cfg.IdleConnTimeout,
		MaxIdleConnsPerHost:   cfg.MaxConnsPerHost,
	}}, nil
}

// tlsConfig is the TLS configuration of cfg: system roots or RootCAs, plus CAFile.
func tlsConfig(cfg Config) (*tls.Config, error) {
	roots := cfg.RootCAs
	if roots == nil {
		var err error
		if roots, err = x509.SystemCertPool(); err != nil {
			roots = x509.NewCertPool()
		}
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		roots = roots.Clone()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", cfg.CAFile)
		}
	}
	return &tls.Config{RootCAs: roots, InsecureSkipVerify: cfg.InsecureSkipVerify, MinVersion: tls.VersionTLS12}, nil
}

// Close drops pooled connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// dialTLS connects to the resolved addresses in order, refusing denied ones, and
// completes a TLS handshake verifying the certificate for the resolved name.
// Connections are pooled per destination: the request URL's host is the
// destination's server name.
func (c *Client) dialTLS(ctx context.Context, network, _ string) (net.Conn, error) {
	res, ok := ctx.Value(resolutionKey{}).(discovery.Result)
	if !ok {
		return nil, errors.New("dial without a resolution")
	}
	d := net.Dialer{Timeout: c.cfg.ConnectTimeout, Control: c.checkAddress}
	var lastErr error
	for _, addr := range res.Addrs {
		raw, err := d.DialContext(ctx, network, addr)
		if err != nil {
			lastErr = err
			continue
		}
		conf := c.tls.Clone()
		conf.ServerName = res.TLSServerName
		tc := tls.Client(raw, conf)
		hctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
		err = tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS handshake with %s (%s): %w", addr, res.TLSServerName, err)
		}
		return tc, nil
	}
	return nil, lastErr
}

// checkAddress refuses addresses in private, loopback, link-local and other
// internal ranges unless allowed, so a server name cannot reach internal services.
// It runs on the resolved address, after DNS.
func (c *Client) checkAddress(_, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return fmt.Errorf("%w: %s is not an IP address", ErrDeniedAddress, host)
	}
	for _, n := range c.allowed {
		if n.Contains(ip) {
			return nil
		}
	}
	if denied(ip) {
		return fmt.Errorf("%w: %s", ErrDeniedAddress, ip)
	}
	return nil
}

var deniedNets = func() []*net.IPNet {
	var out []*net.IPNet
	for _, s := range []string{"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
		"192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
		"::1/128", "::/128", "fc00::/7", "fe80::/10", "ff00::/8", "::ffff:0:0/96"} {
		_, n, _ := net.ParseCIDR(s)
		out = append(out, n)
	}
	return out
}()

func denied(ip net.IP) bool {
	if v4 := ip.To4(); v4 != nil {
		ip = v4 // IPv4-mapped IPv6 is judged as IPv4
	}
	for _, n := range deniedNets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// SendTransaction sends t to t.Destination, retrying transient failures within
// the call, and returns the per-PDU results.
func (c *Client) SendTransaction(ctx context.Context, t *txn.Transaction) (txn.Response, error) {
	body, canonical, err := t.Encode()
	if err != nil {
		return txn.Response{}, &Error{Kind: txn.Fatal, Err: fmt.Errorf("building transaction %s: %w", t.ID, err)}
	}
	raw, err := c.do(ctx, http.MethodPut, t.Destination, t.Path(), body, canonical)
	if err != nil {
		return txn.Response{}, err
	}
	resp, err := txn.ParseResponse(raw)
	if err != nil {
		return txn.Response{}, &Error{Kind: txn.Retry, Status: http.StatusOK, Err: err}
	}
	return resp, nil
}

// do performs a signed request with in-request retries of transient failures.
// canonical is the body's canonical JSON, which the signature covers.
func (c *Client) do(ctx context.Context, method, destination, path string, body, canonical []byte) ([]byte, error) {
	res, err := c.resolver.Resolve(ctx, destination)
	if err != nil {
		return nil, &Error{Kind: txn.Backoff, Err: err}
	}
	auth, err := xmatrix.AuthorizationCanonical(c.cfg.Origin, destination, c.key, method, path, canonical)
	if err != nil {
		return nil, &Error{Kind: txn.Fatal, Err: err}
	}
	delay := c.cfg.RetryDelay
	for attempt := 0; ; attempt++ {
		out, err := c.attempt(ctx, res, method, destination, path, auth, body)
		if err == nil {
			return out, nil
		}
		var e *Error
		if !errors.As(err, &e) || e.Kind != txn.Retry || attempt >= c.cfg.RetriesPerRequest || ctx.Err() != nil {
			return nil, err
		}
		wait := delay
		if e.RetryAfter > 0 {
			if e.RetryAfter > c.cfg.MaxRetryAfter {
				return nil, err
			}
			wait = e.RetryAfter
		}
		c.log.Debug("retrying federation request", "destination", destination, "attempt", attempt+1, "wait", wait, "err", err)
		select {
		case <-ctx.Done():
			return nil, &Error{Kind: txn.Retry, Err: ctx.Err()}
		case <-time.After(wait):
		}
		delay *= 2
	}
}

func (c *Client) attempt(ctx context.Context, res discovery.Result, method, destination, path, auth string, body []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.WithValue(ctx, resolutionKey{}, res), c.cfg.RequestTimeout)
	defer cancel()
	// The URL host is the destination (the connection pool's key); the dialer
	// connects to the resolved address, and Host carries the resolved name.
	req, err := http.NewRequestWithContext(ctx, method, "https://"+hostForURL(destination)+path, bytes.NewReader(body))
	if err != nil {
		return nil, &Error{Kind: txn.Fatal, Err: err}
	}
	req.Host = res.Host
	req.Header.Set("Authorization", auth)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "fedpipe")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, classifyTransport(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, c.cfg.MaxResponseBytes+1))
	if err != nil {
		return nil, &Error{Kind: txn.Retry, Status: resp.StatusCode, Err: fmt.Errorf("reading response: %w", err)}
	}
	if int64(len(data)) > c.cfg.MaxResponseBytes {
		return nil, &Error{Kind: txn.Backoff, Status: resp.StatusCode, Err: fmt.Errorf("response larger than %d bytes", c.cfg.MaxResponseBytes)}
	}
	if resp.StatusCode == http.StatusOK {
		return data, nil
	}
	return nil, statusError(resp, data)
}

// hostForURL makes a server name usable as a URL host; the pool keys by it.
func hostForURL(destination string) string {
	if _, _, err := net.SplitHostPort(destination); err == nil {
		return destination
	}
	return destination + ":443"
}

func statusError(resp *http.Response, body []byte) *Error {
	var m struct {
		Errcode      string `json:"errcode"`
		Error        string `json:"error"`
		RetryAfterMS int64  `json:"retry_after_ms"`
	}
	_ = json.Unmarshal(body, &m) // a body that is not a Matrix error still has a status
	e := &Error{Status: resp.StatusCode, Errcode: m.Errcode, Err: fmt.Errorf("%s", truncate(m.Error, string(body)))}
	switch s := resp.StatusCode; {
	case s == http.StatusTooManyRequests:
		e.Kind = txn.Retry
		e.RetryAfter = time.Duration(m.RetryAfterMS) * time.Millisecond
		if e.RetryAfter == 0 {
			if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
				e.RetryAfter = time.Duration(secs) * time.Second
			}
		}
	case s >= 500:
		e.Kind = txn.Retry
	case s == http.StatusBadRequest || s == http.StatusRequestEntityTooLarge:
		e.Kind = txn.Fatal
	default: // 401, 403, 404 / M_UNRECOGNIZED, other 4xx
		e.Kind = txn.Backoff
	}
	return e
}

func truncate(msg, body string) string {
	if msg == "" {
		msg = body
	}
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	return msg
}
