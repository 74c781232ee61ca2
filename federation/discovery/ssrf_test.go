package discovery_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/client"
	"github.com/fedpipe/fedpipe/federation/discovery"
)

// guardedClient is client.NewDiscoveryHTTPClient's dialer, as production
// builds it (loopback 127.0.0.1 allowed, so the test server is reachable, and
// 127.0.0.2 denied like any internal address), except that the test's *.test
// names are sent to the well-known server: every dial, test names and
// redirect targets alike, goes through the address check.
func guardedClient(t *testing.T, w *wellKnownServer) *http.Client {
	t.Helper()
	cfg := client.Config{Origin: "us.test", RootCAs: w.ca.Pool(), AllowedNetworks: []string{"127.0.0.1/32"}}
	hc, err := client.NewDiscoveryHTTPClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d, err := client.Dialer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tr := hc.Transport.(*http.Transport)
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if host, _, _ := net.SplitHostPort(addr); strings.HasSuffix(host, ".test") {
			addr = w.srv.Listener.Addr().String()
		}
		return d.DialContext(ctx, network, addr)
	}
	return hc
}

// TestWellKnownRedirectsCannotReachInternalAddresses: a .well-known answer
// redirecting to http:// (a cloud metadata service, say) was followed, and the
// resolver's plain HTTP client dialled any address. A redirect away from https
// is refused before any request, and one to a denied address is refused at
// dial time; the server name then resolves as if it had no delegation.
func TestWellKnownRedirectsCannotReachInternalAddresses(t *testing.T) {
	d := startDNS(t)
	w := startWellKnown(t)
	var plainHits, deniedHits atomic.Int64
	plain := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
		plainHits.Add(1)
		rw.Write([]byte(`{"m.server":"evil.test"}`))
	}))
	defer plain.Close()
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2 on this machine: %v", err)
	}
	denied := httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
		deniedHits.Add(1)
		rw.Write([]byte(`{"m.server":"evil.test"}`))
	}))
	denied.Listener.Close()
	denied.Listener = ln
	denied.TLS = w.ca.TLSConfig()
	denied.StartTLS()
	defer denied.Close()

	w.handle("to-http.test", func(rw http.ResponseWriter, r *http.Request) {
		http.Redirect(rw, r, plain.URL+"/latest/meta-data", http.StatusFound)
	})
	w.handle("to-denied.test", func(rw http.ResponseWriter, r *http.Request) {
		http.Redirect(rw, r, denied.URL+"/.well-known/matrix/server", http.StatusFound)
	})
	w.handle("to-https.test", func(rw http.ResponseWriter, r *http.Request) {
		http.Redirect(rw, r, "https://good.test/.well-known/matrix/server", http.StatusFound)
	})
	w.handle("good.test", serveJSON(`{"m.server":"delegated.test:4321"}`))

	r, err := discovery.New(discovery.Config{WellKnownTimeout: 2 * time.Second}, discovery.WithLookupSRV(d.lookup()), discovery.WithHTTPClient(guardedClient(t, w)))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		in   string
		want discovery.Result
	}{
		{"to-http.test", discovery.Result{[]string{"to-http.test:8448"}, "to-http.test", "to-http.test"}},
		{"to-denied.test", discovery.Result{[]string{"to-denied.test:8448"}, "to-denied.test", "to-denied.test"}},
		{"to-https.test", discovery.Result{[]string{"delegated.test:4321"}, "delegated.test:4321", "delegated.test"}},
	} {
		got, err := r.Resolve(context.Background(), tc.in)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Resolve(%s) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
	if plainHits.Load() != 0 || deniedHits.Load() != 0 {
		t.Errorf("redirect targets reached: http %d, denied address %d", plainHits.Load(), deniedHits.Load())
	}

	// The dialer alone: the denied address is refused before connecting.
	dl, err := client.Dialer(client.Config{Origin: "us.test", AllowedNetworks: []string{"127.0.0.1/32"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dl.DialContext(context.Background(), "tcp", ln.Addr().String()); !errors.Is(err, client.ErrDeniedAddress) {
		t.Errorf("dialling %s: %v, want ErrDeniedAddress", ln.Addr(), err)
	}
}
