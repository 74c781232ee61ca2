package testreceiver_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/signing"
	"github.com/fedpipe/fedpipe/federation/testreceiver"
	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/federation/xmatrix"
)

// sender makes requests by hand, so the receiver is tested independently of
// fedpipe's federation client.
type sender struct {
	key  *signing.Key
	recv *testreceiver.Server
	http *http.Client
}

func start(t *testing.T, names ...string) *sender {
	t.Helper()
	key, err := signing.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	recv, err := testreceiver.Start(testreceiver.Config{Names: names, Keys: func(origin, keyID string) (ed25519.PublicKey, error) {
		if origin == "me.test" && keyID == key.ID {
			return key.Public(), nil
		}
		return nil, fmt.Errorf("unknown key")
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = recv.Close() })
	hc := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: recv.CAPool()},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, recv.Addr())
		},
	}}
	return &sender{key: key, recv: recv, http: hc}
}

func (s *sender) send(t *testing.T, dest, id string, body []byte, tamper bool) int {
	t.Helper()
	path := "/_matrix/federation/v1/send/" + id
	auth, err := xmatrix.Authorization("me.test", dest, s.key, "PUT", path, body)
	if err != nil {
		t.Fatal(err)
	}
	if tamper {
		body = bytes.Replace(body, []byte(`"n":0`), []byte(`"n":1`), 1)
	}
	req, _ := http.NewRequest("PUT", "https://"+dest+path, bytes.NewReader(body))
	req.Header.Set("Authorization", auth)
	resp, err := s.http.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func body(pdus, edus int) []byte {
	tx := txn.Transaction{Origin: "me.test", OriginServerTS: 1}
	for i := 0; i < pdus; i++ {
		tx.PDUs = append(tx.PDUs, json.RawMessage(fmt.Sprintf(`{"n":%d}`, i)))
	}
	for i := 0; i < edus; i++ {
		tx.EDUs = append(tx.EDUs, txn.EDU{Type: "m.typing", Content: json.RawMessage(`{}`)})
	}
	b, _ := tx.Body() // the limits are the receiver's to enforce here
	if b == nil {
		b = []byte(`{"origin":"me.test","origin_server_ts":1,"pdus":[` + strings.TrimSuffix(strings.Repeat(`{"n":0},`, pdus), ",") + `],"edus":[]}`)
	}
	return b
}

func TestAcceptsAndRejects(t *testing.T) {
	s := start(t, "a.test", "b.test")
	for _, tc := range []struct {
		name   string
		dest   string
		body   []byte
		tamper bool
		want   int
	}{
		{"valid", "a.test", body(2, 1), false, 200},
		{"other hosted name", "b.test", body(1, 0), false, 200},
		{"tampered body", "a.test", body(1, 0), true, 401},
		{"unknown destination", "c.test", body(1, 0), false, 404},
		{"too many pdus", "a.test", body(51, 0), false, 400},
		{"not a transaction", "a.test", []byte(`{"origin":"me.test"}`), false, 400},
		{"pdus not a list", "a.test", []byte(`{"origin":"me.test","origin_server_ts":1,"pdus":{}}`), false, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := s.send(t, tc.dest, "t-"+tc.name[:3], tc.body, tc.tamper); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
		})
	}
	if n := len(s.recv.Transactions("a.test")); n != 1 {
		t.Fatalf("a.test recorded %d transactions, want 1", n)
	}
}

func TestOverlappingTransactionsGet429(t *testing.T) {
	s := start(t, "a.test")
	s.recv.SetFault("a.test", testreceiver.Fault{Delay: 300 * time.Millisecond, Times: 1})
	var wg sync.WaitGroup
	codes := make([]int, 2)
	wg.Add(1)
	go func() { defer wg.Done(); codes[0] = s.send(t, "a.test", "1", body(1, 0), false) }()
	deadline := time.Now().Add(5 * time.Second)
	for s.recv.Requests("a.test") == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	codes[1] = s.send(t, "a.test", "2", body(1, 0), false)
	wg.Wait()
	if codes[0] != 200 || codes[1] != 429 || s.recv.ConcurrentRejections() != 1 {
		t.Fatalf("codes %v, rejections %d", codes, s.recv.ConcurrentRejections())
	}
}

func TestFaultsAndDedupe(t *testing.T) {
	s := start(t, "a.test")
	s.recv.SetFault("a.test", testreceiver.Fault{Status: 502, Times: 2})
	for i, want := range []int{502, 502, 200, 200} {
		if got := s.send(t, "a.test", "same", body(1, 0), false); got != want {
			t.Fatalf("request %d: %d, want %d", i, got, want)
		}
	}
	if len(s.recv.Transactions("a.test")) != 1 || s.recv.DuplicateTxns() != 1 {
		t.Fatalf("dedupe: %d recorded, %d duplicates", len(s.recv.Transactions("a.test")), s.recv.DuplicateTxns())
	}
	s.recv.SetFault("a.test", testreceiver.Fault{DropConnection: true, Times: 1})
	if got := s.send(t, "a.test", "x", body(1, 0), false); got != 0 {
		t.Fatalf("dropped connection answered %d", got)
	}
	s.recv.SetFault("a.test", testreceiver.Fault{SlowBody: 100 * time.Millisecond, Times: 1})
	start := time.Now()
	if got := s.send(t, "a.test", "slow", body(1, 0), false); got != 200 || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("slow body: %d after %s", got, time.Since(start))
	}
}
