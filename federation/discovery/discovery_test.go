package discovery_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fedpipe/fedpipe/federation/discovery"
	"github.com/fedpipe/fedpipe/federation/testreceiver"
)

// dnsServer answers SRV queries from a table, on loopback UDP.
type dnsServer struct {
	mu      sync.Mutex
	records map[string][]*dns.SRV // "_matrix-fed._tcp.name." → records
	fail    map[string]bool       // answer SERVFAIL
	addr    string
}

func startDNS(t *testing.T) *dnsServer {
	t.Helper()
	d := &dnsServer{records: map[string][]*dns.SRV{}, fail: map[string]bool{}}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d.addr = pc.LocalAddr().String()
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(d.serve)}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return d
}

func (d *dnsServer) serve(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	d.mu.Lock()
	name := q.Question[0].Name
	if d.fail[name] {
		m.Rcode = dns.RcodeServerFailure
	} else if recs, ok := d.records[name]; ok && q.Question[0].Qtype == dns.TypeSRV {
		for _, r := range recs {
			r.Hdr = dns.RR_Header{Name: name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 60}
			m.Answer = append(m.Answer, r)
		}
	} else if !ok {
		m.Rcode = dns.RcodeNameError
	}
	d.mu.Unlock()
	_ = w.WriteMsg(m)
}

func (d *dnsServer) addSRV(service, host, target string, port uint16) {
	d.mu.Lock()
	defer d.mu.Unlock()
	name := "_" + service + "._tcp." + host + "."
	d.records[name] = append(d.records[name], &dns.SRV{Priority: 10, Weight: 5, Port: port, Target: target + "."})
}

func (d *dnsServer) lookup() discovery.LookupSRV {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "udp", d.addr)
	}}
	return r.LookupSRV
}

// wellKnownServer serves /.well-known/matrix/server for any host name, with TLS
// certificates from a test CA, reached by a client whose dialer sends every host there.
type wellKnownServer struct {
	mu       sync.Mutex
	handlers map[string]http.HandlerFunc // by Host
	hits     atomic.Int64
	srv      *httptest.Server
	ca       *testreceiver.CA
}

func startWellKnown(t *testing.T) *wellKnownServer {
	t.Helper()
	ca, err := testreceiver.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	w := &wellKnownServer{handlers: map[string]http.HandlerFunc{}, ca: ca}
	w.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.hits.Add(1)
		w.mu.Lock()
		h, ok := w.handlers[r.Host]
		w.mu.Unlock()
		if !ok || r.URL.Path != "/.well-known/matrix/server" {
			http.NotFound(rw, r)
			return
		}
		h(rw, r)
	}))
	w.srv.TLS = ca.TLSConfig()
	w.srv.StartTLS()
	t.Cleanup(w.srv.Close)
	return w
}

func (w *wellKnownServer) handle(host string, h http.HandlerFunc) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.handlers[host] = h
}

func (w *wellKnownServer) client() *http.Client {
	addr := w.srv.Listener.Addr().String()
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: w.ca.Pool()},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}}
}

func serveJSON(body string, headers ...string) http.HandlerFunc {
	return func(rw http.ResponseWriter, _ *http.Request) {
		for i := 0; i+1 < len(headers); i += 2 {
			rw.Header().Set(headers[i], headers[i+1])
		}
		rw.Header().Set("Content-Type", "application/json")
		fmt.Fprint(rw, body)
	}
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newResolver(t *testing.T, d *dnsServer, w *wellKnownServer, clk *clock, cfg discovery.Config) *discovery.Resolver {
	t.Helper()
	cfg.WellKnownTimeout = 2 * time.Second
	r, err := discovery.New(cfg, discovery.WithLookupSRV(d.lookup()), discovery.WithHTTPClient(w.client()), discovery.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestResolve(t *testing.T) {
	d := startDNS(t)
	w := startWellKnown(t)
	// Delegations.
	w.handle("wk-port.test", serveJSON(`{"m.server":"matrix.wk-port.test:1234"}`))
	w.handle("wk-ip.test", serveJSON(`{"m.server":"10.1.2.3"}`))
	w.handle("wk-srv.test", serveJSON(`{"m.server":"delegated.test"}`))
	d.addSRV("matrix-fed", "delegated.test", "fed.delegated.test", 8443)
	w.handle("wk-plain.test", serveJSON(`{"m.server":"plain-delegated.test"}`))
	w.handle("wk-legacy.test", serveJSON(`{"m.server":"legacy-delegated.test"}`))
	d.addSRV("matrix", "legacy-delegated.test", "old.legacy-delegated.test", 8009)
	// Broken well-knowns fall through to SRV / 8448.
	w.handle("wk-badjson.test", serveJSON(`{"m.server":`))
	w.handle("wk-badname.test", serveJSON(`{"m.server":"bad name!"}`))
	w.handle("wk-huge.test", serveJSON(`{"m.server":"x.test","pad":"`+strings.Repeat("a", 60<<10)+`"}`))
	w.handle("wk-loop.test", func(rw http.ResponseWriter, r *http.Request) {
		http.Redirect(rw, r, "https://wk-loop.test/.well-known/matrix/server", http.StatusFound)
	})
	w.handle("wk-redirect.test", func(rw http.ResponseWriter, r *http.Request) {
		http.Redirect(rw, r, "https://wk-port.test/.well-known/matrix/server", http.StatusMovedPermanently)
	})
	d.addSRV("matrix-fed", "srv.test", "fed.srv.test", 8448)
	d.addSRV("matrix-fed", "srv.test", "fed2.srv.test", 9000)
	d.addSRV("matrix", "legacy.test", "old.legacy.test", 443)
	d.addSRV("matrix-fed", "wk-badjson.test", "fallback.wk-badjson.test", 7000)

	for _, tc := range []struct {
		name string
		in   string
		want discovery.Result
	}{
		{"ipv4 literal", "1.2.3.4", discovery.Result{[]string{"1.2.3.4:8448"}, "1.2.3.4", "1.2.3.4"}},
		{"ipv4 with port", "1.2.3.4:1234", discovery.Result{[]string{"1.2.3.4:1234"}, "1.2.3.4:1234", "1.2.3.4"}},
		{"ipv6 literal", "[2001:db8::1]", discovery.Result{[]string{"[2001:db8::1]:8448"}, "[2001:db8::1]", "2001:db8::1"}},
		{"ipv6 with port", "[2001:db8::1]:99", discovery.Result{[]string{"[2001:db8::1]:99"}, "[2001:db8::1]:99", "2001:db8::1"}},
		{"explicit port skips discovery", "wk-srv.test:555", discovery.Result{[]string{"wk-srv.test:555"}, "wk-srv.test:555", "wk-srv.test"}},
		{"well-known with port", "wk-port.test", discovery.Result{[]string{"matrix.wk-port.test:1234"}, "matrix.wk-port.test:1234", "matrix.wk-port.test"}},
		{"well-known with ip", "wk-ip.test", discovery.Result{[]string{"10.1.2.3:8448"}, "10.1.2.3", "10.1.2.3"}},
		{"well-known then SRV", "wk-srv.test", discovery.Result{[]string{"fed.delegated.test:8443"}, "delegated.test", "delegated.test"}},
		{"well-known then 8448", "wk-plain.test", discovery.Result{[]string{"plain-delegated.test:8448"}, "plain-delegated.test", "plain-delegated.test"}},
		{"well-known then legacy SRV", "wk-legacy.test", discovery.Result{[]string{"old.legacy-delegated.test:8009"}, "legacy-delegated.test", "legacy-delegated.test"}},
		{"well-known redirect followed", "wk-redirect.test", discovery.Result{[]string{"matrix.wk-port.test:1234"}, "matrix.wk-port.test:1234", "matrix.wk-port.test"}},
		{"invalid well-known JSON falls to SRV", "wk-badjson.test", discovery.Result{[]string{"fallback.wk-badjson.test:7000"}, "wk-badjson.test", "wk-badjson.test"}},
		{"invalid delegated name ignored", "wk-badname.test", discovery.Result{[]string{"wk-badname.test:8448"}, "wk-badname.test", "wk-badname.test"}},
		{"oversized well-known ignored", "wk-huge.test", discovery.Result{[]string{"wk-huge.test:8448"}, "wk-huge.test", "wk-huge.test"}},
		{"redirect loop ignored", "wk-loop.test", discovery.Result{[]string{"wk-loop.test:8448"}, "wk-loop.test", "wk-loop.test"}},
		{"SRV matrix-fed", "srv.test", discovery.Result{[]string{"fed.srv.test:8448", "fed2.srv.test:9000"}, "srv.test", "srv.test"}},
		{"legacy SRV", "legacy.test", discovery.Result{[]string{"old.legacy.test:443"}, "legacy.test", "legacy.test"}},
		{"nothing: 8448", "plain.test", discovery.Result{[]string{"plain.test:8448"}, "plain.test", "plain.test"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newResolver(t, d, w, &clock{now: time.Unix(1e9, 0)}, discovery.Config{})
			got, err := r.Resolve(context.Background(), tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if tc.name == "SRV matrix-fed" { // equal priorities: order is by weight, randomised
				if len(got.Addrs) == 2 && got.Addrs[0] > got.Addrs[1] {
					got.Addrs[0], got.Addrs[1] = got.Addrs[1], got.Addrs[0]
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Resolve(%s) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestStaticMapOverrides(t *testing.T) {
	d, w := startDNS(t), startWellKnown(t)
	r := newResolver(t, d, w, &clock{now: time.Now()}, discovery.Config{Static: map[string]string{"wk-port.test": "127.0.0.1:4000"}})
	got, err := r.Resolve(context.Background(), "wk-port.test")
	if err != nil {
		t.Fatal(err)
	}
	if want := (discovery.Result{[]string{"127.0.0.1:4000"}, "wk-port.test", "wk-port.test"}); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v", got)
	}
	if w.hits.Load() != 0 {
		t.Fatal("static entry still fetched .well-known")
	}
}

func TestWellKnownCaching(t *testing.T) {
	d, w := startDNS(t), startWellKnown(t)
	clk := &clock{now: time.Unix(1e9, 0)}
	r := newResolver(t, d, w, clk, discovery.Config{})
	ctx := context.Background()
	w.handle("cached.test", serveJSON(`{"m.server":"a.cached.test:1"}`, "Cache-Control", "max-age=3600"))
	w.handle("short.test", serveJSON(`{"m.server":"a.short.test:1"}`, "Cache-Control", "max-age=1"))
	w.handle("missing.test", http.NotFound)

	resolve := func(name string) string {
		res, err := r.Resolve(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return res.Addrs[0]
	}
	resolve("cached.test")
	w.handle("cached.test", serveJSON(`{"m.server":"b.cached.test:2"}`))
	clk.advance(59 * time.Minute)
	if got := resolve("cached.test"); got != "a.cached.test:1" {
		t.Fatalf("cache not used within max-age: %s", got)
	}
	clk.advance(2 * time.Minute)
	if got := resolve("cached.test"); got != "b.cached.test:2" {
		t.Fatalf("cache not refreshed after max-age: %s", got)
	}

	// max-age below the floor is raised to it (5 minutes).
	resolve("short.test")
	w.handle("short.test", serveJSON(`{"m.server":"b.short.test:2"}`))
	clk.advance(4 * time.Minute)
	if got := resolve("short.test"); got != "a.short.test:1" {
		t.Fatalf("minimum cache period not applied: %s", got)
	}

	// A failure is cached for the invalid period (1 hour), then tried again.
	before := w.hits.Load()
	resolve("missing.test")
	resolve("missing.test")
	if w.hits.Load()-before != 1 {
		t.Fatalf("failure not cached: %d fetches", w.hits.Load()-before)
	}
	w.handle("missing.test", serveJSON(`{"m.server":"found.missing.test:3"}`))
	clk.advance(30 * time.Minute)
	if got := resolve("missing.test"); got != "missing.test:8448" {
		t.Fatalf("failure cache expired early: %s", got)
	}
	clk.advance(31 * time.Minute)
	if got := resolve("missing.test"); got != "found.missing.test:3" {
		t.Fatalf("failure cached too long: %s", got)
	}
}

func TestUnreachableWellKnownCachedBriefly(t *testing.T) {
	d := startDNS(t)
	clk := &clock{now: time.Unix(1e9, 0)}
	var dials atomic.Int64
	refused := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		dials.Add(1)
		return nil, errors.New("connection refused")
	}}}
	r, err := discovery.New(discovery.Config{}, discovery.WithLookupSRV(d.lookup()), discovery.WithHTTPClient(refused), discovery.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := r.Resolve(context.Background(), "down.test"); err != nil {
			t.Fatal(err)
		}
	}
	if dials.Load() != 1 {
		t.Fatalf("%d dials, want 1 (cached)", dials.Load())
	}
	clk.advance(3 * time.Minute)
	if _, err := r.Resolve(context.Background(), "down.test"); err != nil {
		t.Fatal(err)
	}
	if dials.Load() != 2 {
		t.Fatalf("down cache (2 min) not expired: %d dials", dials.Load())
	}
}

func TestDNSFailureIsAnError(t *testing.T) {
	d, w := startDNS(t), startWellKnown(t)
	d.mu.Lock()
	d.fail["_matrix-fed._tcp.broken.test."] = true
	d.mu.Unlock()
	r := newResolver(t, d, w, &clock{now: time.Now()}, discovery.Config{})
	_, err := r.Resolve(context.Background(), "broken.test")
	if !errors.Is(err, discovery.ErrResolve) {
		t.Fatalf("SERVFAIL gave %v, want ErrResolve", err)
	}
}
