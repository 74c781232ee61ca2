package client_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/client"
	"github.com/fedpipe/fedpipe/federation/discovery"
	"github.com/fedpipe/fedpipe/federation/signing"
	"github.com/fedpipe/fedpipe/federation/testreceiver"
	"github.com/fedpipe/fedpipe/federation/txn"
)

type env struct {
	key  *signing.Key
	recv *testreceiver.Server
	cl   *client.Client
}

func setup(t *testing.T, names []string, adjust func(*client.Config)) *env {
	t.Helper()
	key, err := signing.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	recv, err := testreceiver.Start(testreceiver.Config{Names: names, Keys: func(origin, keyID string) (ed25519.PublicKey, error) {
		if origin == "origin.test" && keyID == key.ID {
			return key.Public(), nil
		}
		return nil, fmt.Errorf("no key %s for %s", keyID, origin)
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = recv.Close() })
	static := map[string]string{}
	for _, n := range names {
		static[n] = recv.Addr()
	}
	static["unhosted.test"] = recv.Addr()
	res, err := discovery.New(discovery.Config{Static: static})
	if err != nil {
		t.Fatal(err)
	}
	cfg := client.Config{Origin: "origin.test", RootCAs: recv.CAPool(), AllowedNetworks: []string{"127.0.0.0/8"}, RetryDelay: 10 * time.Millisecond, RequestTimeout: 5 * time.Second}
	if adjust != nil {
		adjust(&cfg)
	}
	cl, err := client.New(cfg, key, res, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &env{key: key, recv: recv, cl: cl}
}

func newTxn(id, dest string, n int) *txn.Transaction {
	t := &txn.Transaction{ID: id, Origin: "origin.test", Destination: dest, OriginServerTS: time.Now().UnixMilli()}
	for i := 0; i < n; i++ {
		_ = t.AddPDU(json.RawMessage(fmt.Sprintf(`{"type":"m.room.message","event_id":"$%s-%d","content":{"n":%d}}`, id, i, i)))
	}
	return t
}

func TestSendTransactionSignedAndRecorded(t *testing.T) {
	e := setup(t, []string{"a.test", "b.test"}, nil)
	resp, err := e.cl.SendTransaction(context.Background(), newTxn("t/1", "a.test", 3))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.PDUs) != 3 {
		t.Fatalf("results %+v", resp)
	}
	got := e.recv.Transactions("a.test")
	if len(got) != 1 || got[0].TxnID != "t/1" || len(got[0].PDUs) != 3 || got[0].Origin != "origin.test" {
		t.Fatalf("received %+v", got)
	}
	if len(e.recv.Transactions("b.test")) != 0 {
		t.Fatal("b.test received a transaction for a.test")
	}
	// The same id again is deduplicated by the receiver, as homeservers do.
	if _, err := e.cl.SendTransaction(context.Background(), newTxn("t/1", "a.test", 3)); err != nil {
		t.Fatal(err)
	}
	if e.recv.DuplicateTxns() != 1 || len(e.recv.Transactions("a.test")) != 1 {
		t.Fatalf("duplicate not seen: %d", e.recv.DuplicateTxns())
	}
}

func TestStatusKinds(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault testreceiver.Fault
		want  txn.Outcome
	}{
		{"401", testreceiver.Fault{Status: 401}, txn.Backoff},
		{"403", testreceiver.Fault{Status: 403}, txn.Backoff},
		{"404 unrecognized", testreceiver.Fault{Status: 404}, txn.Backoff},
		{"400 our bug", testreceiver.Fault{Status: 400}, txn.Fatal},
		{"500 persists", testreceiver.Fault{Status: 500}, txn.Retry},
		{"429 long retry_after", testreceiver.Fault{Status: 429, RetryAfter: time.Hour}, txn.Retry},
		{"dropped connection", testreceiver.Fault{DropConnection: true}, txn.Retry},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, []string{"a.test"}, nil)
			e.recv.SetFault("a.test", tc.fault)
			_, err := e.cl.SendTransaction(context.Background(), newTxn("1", "a.test", 1))
			if txn.OutcomeOf(err) != tc.want {
				t.Fatalf("error %v is %v, want %v", err, txn.OutcomeOf(err), tc.want)
			}
			if tc.name == "429 long retry_after" {
				var ce *client.Error
				if !errors.As(err, &ce) || ce.RetryAfter != time.Hour {
					t.Fatalf("retry_after not reported: %v", err)
				}
			}
		})
	}
}

func TestTransientFailuresRetriedWithinTheRequest(t *testing.T) {
	e := setup(t, []string{"a.test"}, nil)
	e.recv.SetFault("a.test", testreceiver.Fault{Status: 503, Times: 2})
	if _, err := e.cl.SendTransaction(context.Background(), newTxn("1", "a.test", 1)); err != nil {
		t.Fatalf("two 503s then success should succeed: %v", err)
	}
	if n := e.recv.Requests("a.test"); n != 3 {
		t.Fatalf("%d requests, want 3", n)
	}
	e.recv.SetFault("a.test", testreceiver.Fault{Status: 429, RetryAfter: 20 * time.Millisecond, Times: 1})
	if _, err := e.cl.SendTransaction(context.Background(), newTxn("2", "a.test", 1)); err != nil {
		t.Fatalf("429 with a short retry_after should be retried: %v", err)
	}
}

func TestUnhostedNameIsBackoff(t *testing.T) {
	e := setup(t, []string{"a.test"}, nil)
	_, err := e.cl.SendTransaction(context.Background(), newTxn("1", "unhosted.test", 1))
	if txn.OutcomeOf(err) != txn.Backoff {
		t.Fatalf("got %v", err)
	}
}

func TestLoopbackDeniedUnlessAllowed(t *testing.T) {
	e := setup(t, []string{"a.test"}, func(c *client.Config) { c.AllowedNetworks = nil })
	_, err := e.cl.SendTransaction(context.Background(), newTxn("1", "a.test", 1))
	if !errors.Is(err, client.ErrDeniedAddress) || txn.OutcomeOf(err) != txn.Backoff {
		t.Fatalf("loopback reached without being allowed: %v", err)
	}
	if e.recv.Requests("a.test") != 0 {
		t.Fatal("request arrived")
	}
}

func TestUntrustedCertificateIsBackoff(t *testing.T) {
	e := setup(t, []string{"a.test"}, func(c *client.Config) { c.RootCAs = nil })
	_, err := e.cl.SendTransaction(context.Background(), newTxn("1", "a.test", 1))
	if txn.OutcomeOf(err) != txn.Backoff {
		t.Fatalf("untrusted certificate: %v (%v)", err, txn.OutcomeOf(err))
	}
	ins := setup(t, []string{"a.test"}, func(c *client.Config) { c.RootCAs = nil; c.InsecureSkipVerify = true })
	if _, err := ins.cl.SendTransaction(context.Background(), newTxn("1", "a.test", 1)); err != nil {
		t.Fatalf("insecure option did not skip verification: %v", err)
	}
}

// A plain httptest TLS server lets the test look at the raw request and count connections.
func TestHostHeaderSNIAndConnectionReuse(t *testing.T) {
	var conns atomic.Int64
	var mu sync.Mutex
	var hosts, snis []string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hosts = append(hosts, r.Host)
		snis = append(snis, r.TLS.ServerName)
		mu.Unlock()
		fmt.Fprint(w, `{"pdus":{}}`)
	}))
	ca, err := testreceiver.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = ca.TLSConfig()
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	defer srv.Close()
	key, _ := signing.GenerateKey()
	res, _ := discovery.New(discovery.Config{Static: map[string]string{"x.test:8448": srv.Listener.Addr().String()}})
	cl, err := client.New(client.Config{Origin: "origin.test", RootCAs: ca.Pool(), AllowedNetworks: []string{"127.0.0.0/8"}}, key, res, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i := 0; i < 5; i++ {
		if _, err := cl.SendTransaction(context.Background(), newTxn(fmt.Sprint(i), "x.test:8448", 1)); err != nil {
			t.Fatal(err)
		}
	}
	if conns.Load() != 1 {
		t.Fatalf("%d connections for 5 sequential requests, want 1 (reuse)", conns.Load())
	}
	if hosts[0] != "x.test:8448" || snis[0] != "x.test" {
		t.Fatalf("Host %q SNI %q", hosts[0], snis[0])
	}
}

func TestOversizedAndMalformedResponses(t *testing.T) {
	big := make([]byte, 2<<20)
	for i := range big {
		big[i] = 'a'
	}
	for _, tc := range []struct {
		name string
		body []byte
		want txn.Outcome
	}{
		{"oversized", append(append([]byte(`{"pdus":{},"pad":"`), big...), '"', '}'), txn.Backoff},
		{"malformed", []byte(`{"pdus":[`), txn.Retry},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca, _ := testreceiver.NewCA()
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(tc.body) }))
			srv.TLS = ca.TLSConfig()
			srv.StartTLS()
			defer srv.Close()
			key, _ := signing.GenerateKey()
			res, _ := discovery.New(discovery.Config{Static: map[string]string{"x.test": srv.Listener.Addr().String()}})
			cl, _ := client.New(client.Config{Origin: "origin.test", RootCAs: ca.Pool(), AllowedNetworks: []string{"127.0.0.0/8"}, MaxResponseBytes: 1 << 20, RetriesPerRequest: -0, RetryDelay: time.Millisecond}, key, res, slog.New(slog.DiscardHandler))
			_, err := cl.SendTransaction(context.Background(), newTxn("1", "x.test", 1))
			if txn.OutcomeOf(err) != tc.want {
				t.Fatalf("got %v (%v), want %v", err, txn.OutcomeOf(err), tc.want)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	key, _ := signing.GenerateKey()
	res, _ := discovery.New(discovery.Config{})
	for _, cfg := range []client.Config{
		{Origin: "bad origin"},
		{Origin: "ok.test", AllowedNetworks: []string{"10.0.0.0"}},
		{Origin: "ok.test", CAFile: "/nonexistent/ca.pem"},
	} {
		if _, err := client.New(cfg, key, res, slog.New(slog.DiscardHandler)); err == nil {
			t.Errorf("accepted %+v", cfg)
		}
	}
}
