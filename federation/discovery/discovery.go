// Package discovery resolves Matrix server names to the addresses, Host header
// and TLS server name to use, following the server-server specification's
// "Resolving server names": IP literals, explicit ports, /.well-known/matrix/server
// delegation (cached), SRV _matrix-fed._tcp then the deprecated _matrix._tcp,
// then port 8448. A static map overrides it for private deployments and tests.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/fedpipe/fedpipe/federation/mxid"
)

// DefaultPort is the federation port when nothing else says otherwise.
const DefaultPort = 8448

// ErrResolve is wrapped by Resolve errors: the name cannot be reached (DNS
// failure, invalid name). Callers back such a destination off.
var ErrResolve = errors.New("cannot resolve server name")

// Config configures a Resolver. The well-known figures are Synapse's.
type Config struct {
	// Static maps a server name to the host:port to dial instead of discovering it.
	// Host header and TLS server name stay the server name's hostname.
	Static map[string]string
	// WellKnownCacheDefault is how long a delegation is kept without caching
	// headers. Default 24h.
	WellKnownCacheDefault time.Duration
	// WellKnownCacheMin and WellKnownCacheMax bound what caching headers may
	// ask. Default 5m and 48h.
	WellKnownCacheMin, WellKnownCacheMax time.Duration
	// WellKnownInvalidCache is how long "no valid delegation" (404, bad JSON)
	// is kept. Default 1h.
	WellKnownInvalidCache time.Duration
	// WellKnownDownCache is how long a failure to reach the server at all is
	// kept. Default 2m.
	WellKnownDownCache time.Duration
	// WellKnownMaxBytes limits the response body. Default 50 KiB.
	WellKnownMaxBytes int64
	// WellKnownTimeout bounds one .well-known request, redirects included.
	// Default 10s.
	WellKnownTimeout time.Duration
	// WellKnownMaxRedirects bounds redirects followed. Default 5.
	WellKnownMaxRedirects int
	// Logger receives discovery decisions at debug level. Default: discarded.
	Logger *slog.Logger
}

// Validate fills the defaults of zero fields and reports every invalid
// field, each by name.
func (c *Config) Validate() error {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.WellKnownCacheDefault, 24*time.Hour)
	def(&c.WellKnownCacheMin, 5*time.Minute)
	def(&c.WellKnownCacheMax, 48*time.Hour)
	def(&c.WellKnownInvalidCache, time.Hour)
	def(&c.WellKnownDownCache, 2*time.Minute)
	def(&c.WellKnownTimeout, 10*time.Second)
	if c.WellKnownMaxBytes == 0 {
		c.WellKnownMaxBytes = 50 << 10
	}
	if c.WellKnownMaxRedirects == 0 {
		c.WellKnownMaxRedirects = 5
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	var errs []error
	for name, addr := range c.Static {
		if err := mxid.ValidateServerName(name); err != nil {
			errs = append(errs, fmt.Errorf("Static: %w", err))
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("Static %s: %q is not host:port", name, addr))
		}
	}
	if c.WellKnownCacheMin > c.WellKnownCacheMax {
		errs = append(errs, fmt.Errorf("WellKnownCacheMin %s exceeds WellKnownCacheMax %s", c.WellKnownCacheMin, c.WellKnownCacheMax))
	}
	if c.WellKnownMaxBytes < 0 {
		errs = append(errs, fmt.Errorf("WellKnownMaxBytes must not be negative, got %d", c.WellKnownMaxBytes))
	}
	if c.WellKnownMaxRedirects < 0 {
		errs = append(errs, fmt.Errorf("WellKnownMaxRedirects must not be negative, got %d", c.WellKnownMaxRedirects))
	}
	return errors.Join(errs...)
}

// Result says how to reach a server.
type Result struct {
	// Addrs are the "host:port" addresses to try, in order.
	Addrs []string
	// Host is the Host header to send.
	Host string
	// TLSServerName is the name to send in SNI and verify the certificate for.
	TLSServerName string
}

// LookupSRV is the signature of net.Resolver.LookupSRV.
type LookupSRV func(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)

// Option adjusts a Resolver.
type Option func(*Resolver)

// WithLookupSRV replaces the SRV lookup (tests point it at a local DNS server).
func WithLookupSRV(f LookupSRV) Option { return func(r *Resolver) { r.lookupSRV = f } }

// WithHTTPClient replaces the client used for .well-known requests. Production
// passes client.NewDiscoveryHTTPClient, whose dialer refuses internal
// addresses at dial time; the default http.Client checks nothing.
func WithHTTPClient(c *http.Client) Option { return func(r *Resolver) { r.http = c } }

// WithClock replaces time.Now, for cache tests.
func WithClock(now func() time.Time) Option { return func(r *Resolver) { r.now = now } }

// Resolver resolves server names. It is safe for concurrent use.
type Resolver struct {
	cfg       Config
	lookupSRV LookupSRV
	http      *http.Client
	now       func() time.Time

	mu    sync.Mutex
	cache map[string]wellKnownEntry
}

// New returns a Resolver.
func New(cfg Config, opts ...Option) (*Resolver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Resolver{cfg: cfg, lookupSRV: net.DefaultResolver.LookupSRV, now: time.Now, cache: map[string]wellKnownEntry{}}
	for _, o := range opts {
		o(r)
	}
	if r.http == nil {
		r.http = &http.Client{}
	}
	return r, nil
}

// Resolve works out how to reach serverName.
func (r *Resolver) Resolve(ctx context.Context, serverName string) (Result, error) {
	host, port, err := mxid.SplitServerName(serverName)
	if err != nil {
		return Result{}, fmt.Errorf("%w: %w", ErrResolve, err)
	}
	if addr, ok := r.cfg.Static[serverName]; ok {
		return Result{Addrs: []string{addr}, Host: serverName, TLSServerName: host}, nil
	}
	// 1. An IP literal, with or without a port.
	if ip := net.ParseIP(host); ip != nil {
		return Result{Addrs: []string{joinPort(host, port)}, Host: serverName, TLSServerName: host}, nil
	}
	// 2. A hostname with an explicit port.
	if port != 0 {
		return Result{Addrs: []string{joinPort(host, port)}, Host: serverName, TLSServerName: host}, nil
	}
	// 3. Delegation through /.well-known/matrix/server.
	if delegated, ok := r.wellKnown(ctx, host); ok {
		dhost, dport, _ := mxid.SplitServerName(delegated) // validated when fetched
		if ip := net.ParseIP(dhost); ip != nil || dport != 0 {
			return Result{Addrs: []string{joinPort(dhost, dport)}, Host: delegated, TLSServerName: dhost}, nil
		}
		addrs, err := r.srv(ctx, dhost)
		if err != nil {
			return Result{}, err
		}
		if len(addrs) == 0 {
			addrs = []string{joinPort(dhost, 0)}
		}
		return Result{Addrs: addrs, Host: dhost, TLSServerName: dhost}, nil
	}
	// 4 and 5. SRV records, then 6. port 8448.
	addrs, err := r.srv(ctx, host)
	if err != nil {
		return Result{}, err
	}
	if len(addrs) == 0 {
		addrs = []string{joinPort(host, 0)}
	}
	return Result{Addrs: addrs, Host: host, TLSServerName: host}, nil
}

// srv looks up _matrix-fed._tcp then _matrix._tcp. No records is not an error;
// a lookup that fails for another reason than "no such name" is.
func (r *Resolver) srv(ctx context.Context, host string) ([]string, error) {
	for _, service := range []string{"matrix-fed", "matrix"} {
		_, recs, err := r.lookupSRV(ctx, service, "tcp", host)
		if err != nil {
			var dnsErr *net.DNSError
			if errors.As(err, &dnsErr) && (dnsErr.IsNotFound || dnsErr.Err == "no such host") {
				continue
			}
			return nil, fmt.Errorf("%w: SRV _%s._tcp.%s: %w", ErrResolve, service, host, err)
		}
		var addrs []string
		for _, rec := range recs {
			if rec.Target == "." || rec.Target == "" {
				continue // "service not available here"
			}
			target := rec.Target
			if n := len(target); target[n-1] == '.' {
				target = target[:n-1]
			}
			addrs = append(addrs, net.JoinHostPort(target, strconv.Itoa(int(rec.Port))))
		}
		if len(addrs) > 0 {
			r.cfg.Logger.Debug("resolved by SRV", "host", host, "service", service, "addrs", addrs)
			return addrs, nil
		}
	}
	return nil, nil
}

func joinPort(host string, port int) string {
	if port == 0 {
		port = DefaultPort
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}
