package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/fedpipe/fedpipe/federation/client"
	"github.com/fedpipe/fedpipe/federation/discovery"
	"github.com/fedpipe/fedpipe/federation/keyserver"
	"github.com/fedpipe/fedpipe/federation/signing"
	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
)

// The tier against a real Synapse (scripts/synapse; FEDPIPE_TEST_SYNAPSE names
// its run directory, `make test-synapse` sets it). fedpipe runs as the server
// localhost:<port of its federation listener>, with a certificate from the test
// CA that Synapse trusts; Synapse is localhost:18448 behind fedpipe's static
// resolution map.

// synapsePipeline is a pipeline whose server name Synapse can reach: its key
// listener (stage "keys") serves on the port in the name.
func synapsePipeline(t *testing.T, syn *testenv.Synapse) *pipeline {
	t.Helper()
	p := newPipeline(t, nil)
	port := testenv.FreeLoopbackPort(t)
	c := &p.in.cfg
	c.ServerName = "localhost:" + strconv.Itoa(port)
	c.Federation.Listen = "127.0.0.1:" + strconv.Itoa(port)
	c.Federation.TLSCert, c.Federation.TLSKey = syn.FedpipeCert, syn.FedpipeKey
	c.Federation.Static = map[string]string{syn.ServerName: syn.FederationAddr}
	c.Federation.CAFile = syn.CACert
	c.Federation.AllowedNetworks = []string{"127.0.0.0/8"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	p.cfg = *c
	return p
}

// notaryQuery asks Synapse's key notary API for server's key keyID. Synapse
// fetches it from server itself (trusted_key_servers is empty) unless it has it
// already, verifies it, and answers it with its own signature added; a key it
// refused is not in the answer.
func notaryQuery(t *testing.T, syn *testenv.Synapse, server, keyID string) []json.RawMessage {
	t.Helper()
	criteria := map[string]any{"minimum_valid_until_ts": time.Now().UnixMilli()}
	body, _ := json.Marshal(map[string]any{"server_keys": map[string]any{server: map[string]any{keyID: criteria}}})
	resp, err := syn.FederationClient(t).Post("https://"+syn.FederationAddr+"/_matrix/key/v2/query", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("key query to Synapse: %v", err)
	}
	defer resp.Body.Close()
	var out struct {
		ServerKeys []json.RawMessage `json:"server_keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("key query to Synapse: %s, %v", resp.Status, err)
	}
	return out.ServerKeys
}

// Synapse fetches fedpipe's key from the stage "keys" over HTTPS, verifies its
// self-signature and vouches for it; a response whose signature does not match
// is refused, so the first check can fail.
func TestSynapseFetchesAndVerifiesFedpipesKey(t *testing.T) {
	syn := testenv.SynapseServer(t)
	p := synapsePipeline(t, syn)
	p.start("keys")
	off := syn.LogOffset(t)

	keys := notaryQuery(t, syn, p.in.cfg.ServerName, p.key.ID)
	if len(keys) != 1 {
		t.Fatalf("Synapse answered %d key responses for %s, want 1; its log:\n%s", len(keys), p.in.cfg.ServerName, strings.Join(syn.LogSince(t, off), "\n"))
	}
	var got struct {
		ServerName string                       `json:"server_name"`
		VerifyKeys map[string]map[string]string `json:"verify_keys"`
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(keys[0], &got); err != nil {
		t.Fatal(err)
	}
	if got.ServerName != p.in.cfg.ServerName || got.VerifyKeys[p.key.ID]["key"] != base64.RawStdEncoding.EncodeToString(p.key.Public()) {
		t.Fatalf("Synapse vouches for %s", keys[0])
	}
	if len(got.Signatures[syn.ServerName]) == 0 {
		t.Fatalf("Synapse did not sign the key it fetched: %s", keys[0])
	}
	// Synapse re-encoded what it fetched: our signature must still hold.
	if err := signing.VerifyJSON(p.in.cfg.ServerName, p.key.ID, p.key.Public(), keys[0]); err != nil {
		t.Fatalf("our signature on the key response Synapse returns: %v", err)
	}
	t.Logf("Synapse %s accepted the key of %s: %s", syn.Version, p.in.cfg.ServerName, keys[0])

	// A server whose response is changed after signing.
	forged, err := signing.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	port := testenv.FreeLoopbackPort(t)
	name := "localhost:" + strconv.Itoa(port)
	resp, err := keyserver.Response(keyserver.Config{ServerName: name, Keys: []*signing.Key{forged}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	resp = bytes.Replace(resp, []byte(`"valid_until_ts":`), []byte(`"valid_until_ts":1`), 1)
	serveTLS(t, "127.0.0.1:"+strconv.Itoa(port), syn, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(resp)
	}))
	off = syn.LogOffset(t)
	if keys := notaryQuery(t, syn, name, forged.ID); len(keys) != 0 {
		t.Fatalf("Synapse vouched for a key response with a broken signature: %s", keys[0])
	}
	lines := grep(syn.LogSince(t, off), regexp.MustCompile(`(?i)keys from `+regexp.QuoteMeta(name)+`|signature`))
	if len(lines) == 0 {
		t.Fatalf("Synapse refused the forged key response but logged nothing about it")
	}
	t.Logf("Synapse refused the forged key response of %s:\n%s", name, strings.Join(lines, "\n"))
}

// The end-to-end tier: fedpipe delivers to Synapse a to-device message
// (through the whole to-device pipeline), a local user's presence (the whole presence pipeline)
// and the PDUs of a room Synapse's user is joined to in fedpipe's view.
// Synapse authenticates every transaction with the key it fetches from
// fedpipe and answers 200; the to-device message reaches the user's /sync,
// the presence is in Synapse's presence stream, and the PDUs are dropped
// because Synapse is not in the room (it would need fedpipe to be a
// homeserver; see docs/synapse.md).
func TestSynapseReceivesFedpipesTransactions(t *testing.T) {
	syn := testenv.SynapseServer(t)
	p := synapsePipeline(t, syn)
	h := &presenceHarness{pipeline: p}
	p.startWith(&stageOptions{}, "relay", "presence", "router", "sender", "ingest", "keys")
	off := syn.LogOffset(t)
	us := p.in.cfg.ServerName
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	bob := syn.Register(t, "bob"+run)
	alice := "@alice" + run + ":" + us
	room := "!r" + run + ":" + us

	// Presence of a user sharing a room with bob, and that room's join PDU.
	h.join(room, bob.UserID)
	h.join(room, alice)
	h.usersync("w1", syncs(alice, true))

	// A to-device message from alice to bob's device, through the to-device
	// pipeline: the outbox, the relay, the router and the sender's store.
	msgID := "m" + run
	if _, err := outbox.SendToDeviceBatch(context.Background(), p.in.pool, us, outbox.ToDevice{Sender: alice, Type: "org.fedpipe.test", MessageID: msgID,
		Messages: map[string]map[string]json.RawMessage{bob.UserID: {bob.DeviceID: json.RawMessage(`{"hello":"synapse","run":"` + run + `"}`)}}}); err != nil {
		t.Fatal(err)
	}

	// The message appears in bob's /sync, long-polled as a client does.
	since := ""
	testenv.Eventually(t, 60*time.Second, "the to-device message in bob's /sync", func() bool {
		var sync struct {
			NextBatch string `json:"next_batch"`
			ToDevice  struct {
				Events []struct {
					Sender  string         `json:"sender"`
					Type    string         `json:"type"`
					Content map[string]any `json:"content"`
				} `json:"events"`
			} `json:"to_device"`
		}
		path := "/_matrix/client/v3/sync?timeout=0"
		if since != "" {
			path = "/_matrix/client/v3/sync?timeout=2000&since=" + since
		}
		syn.ClientGet(t, bob.AccessToken, path, &sync)
		since = sync.NextBatch
		for _, e := range sync.ToDevice.Events {
			if e.Sender == alice && e.Type == "org.fedpipe.test" && e.Content["run"] == run && e.Content["hello"] == "synapse" {
				return true
			}
		}
		return false
	})
	// Synapse keeps remote users' presence in its presence stream; no client
	// API shows it to bob, who shares no room with alice in Synapse's view.
	testenv.Eventually(t, 60*time.Second, "alice online in Synapse's presence stream", func() bool {
		rows := syn.Query(t, `SELECT state FROM presence_stream WHERE user_id = ?`, alice)
		return len(rows) == 1 && rows[0][0] == "online"
	})
	h.settle()
	unknownRoom := regexp.MustCompile(`Ignoring PDU for unknown room_id: ` + regexp.QuoteMeta(room))
	testenv.Eventually(t, 10*time.Second, "Synapse's verdict on the room's PDU", func() bool {
		return len(grep(syn.LogSince(t, off), unknownRoom)) > 0
	})

	// Every transaction fedpipe counted as accepted is in Synapse's access log
	// (written once the response is out, so polled), each answered 200, and
	// Synapse logged no refusal.
	sends := regexp.MustCompile(`\{` + regexp.QuoteMeta(us) + `\} Processed request: .* (\d{3}) "PUT /_matrix/federation/v1/send/`)
	var log []string
	statuses := map[string]int{}
	var ok float64
	testenv.Eventually(t, 10*time.Second, "Synapse's access log to show every transaction fedpipe sent", func() bool {
		log = syn.LogSince(t, off)
		clear(statuses)
		n := 0
		for _, l := range log {
			if m := sends.FindStringSubmatch(l); m != nil {
				statuses[m[1]]++
				n++
			}
		}
		ok = counter(t, p.regs[0], "fedpipe_sender_transactions_total", "ok")
		return ok > 0 && float64(n) >= ok
	})
	if len(statuses) != 1 || float64(statuses["200"]) != ok {
		t.Fatalf("Synapse answered our transactions %v; fedpipe counted %v accepted", statuses, ok)
	}
	// Synapse's storage loggers name tables like e2e_cross_signing_signatures
	// in routine background updates; a refusal comes from elsewhere.
	var fromFederation []string
	for _, l := range log {
		if !strings.Contains(l, " - synapse.storage.") {
			fromFederation = append(fromFederation, l)
		}
	}
	refusals := grep(fromFederation, regexp.MustCompile(`(?i)authenticate_request failed|signature (was|is|verif|fail|for)|verify signature|error (looking up|getting) keys|spoofed|bad 'user_id'|not a user here|Failed to`))
	if len(refusals) > 0 {
		t.Fatalf("Synapse logged %d refusals:\n%s", len(refusals), strings.Join(refusals, "\n"))
	}
	t.Logf("Synapse %s accepted %d transactions from %s (all 200), delivered the to-device message to %s's /sync and stored %s online; dropped the room's PDUs:\n%s",
		syn.Version, statuses["200"], us, bob.UserID, alice, strings.Join(grep(log, unknownRoom), "\n"))
}

func grep(lines []string, re *regexp.Regexp) []string {
	var out []string
	for _, l := range lines {
		if re.MatchString(l) {
			out = append(out, l)
		}
	}
	return out
}

// counter is the value of a counter in reg with the label value given.
func counter(t testing.TB, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if hasLabelValue(m, label) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func hasLabelValue(m *dto.Metric, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetValue() == v {
			return true
		}
	}
	return false
}

// serveTLS serves h on addr with fedpipe's test certificate until the test ends.
func serveTLS(t *testing.T, addr string, syn *testenv.Synapse, h http.Handler) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(syn.FedpipeCert, syn.FedpipeKey)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}}))
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
}

// A transaction signed with a key other than the one fedpipe publishes (same
// key id, other key) is refused by Synapse with 401 M_UNAUTHORIZED, which the
// client reports as a backoff: docs/synapse.md says so.
func TestSynapseRefusesATransactionSignedWithAnotherKey(t *testing.T) {
	syn := testenv.SynapseServer(t)
	p := synapsePipeline(t, syn)
	p.startWith(&stageOptions{}, "keys")
	us := p.in.cfg.ServerName
	seed := make([]byte, 32)
	if _, err := rand.Read(seed); err != nil {
		t.Fatal(err)
	}
	other, err := signing.NewKey(p.key.Version(), seed)
	if err != nil {
		t.Fatal(err)
	}
	res, err := discovery.New(discovery.Config{Static: p.in.cfg.Federation.Static})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(client.Config{Origin: us, CAFile: syn.CACert, AllowedNetworks: []string{"127.0.0.0/8"}}, other, res, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	off := syn.LogOffset(t)
	tx := &txn.Transaction{ID: "forged" + strconv.FormatInt(time.Now().UnixNano(), 36), Origin: us, Destination: syn.ServerName, OriginServerTS: time.Now().UnixMilli()}
	if err := tx.AddEDU(txn.EDU{Type: "m.typing", Content: json.RawMessage(`{"room_id":"!r:` + us + `","user_id":"@a:` + us + `","typing":true}`)}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err = cl.SendTransaction(ctx, tx)
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != http.StatusUnauthorized || ce.Errcode != "M_UNAUTHORIZED" || txn.OutcomeOf(err) != txn.Backoff {
		t.Fatalf("a transaction signed with another key: %v; want 401 M_UNAUTHORIZED, a backoff", err)
	}
	why := grep(syn.LogSince(t, off), regexp.MustCompile(`(?i)invalid signature|signature`))
	t.Logf("Synapse %s refused it: %v\n%s", syn.Version, err, strings.Join(why, "\n"))
}
