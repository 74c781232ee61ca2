package testenv

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// SynapseEnvVar names the run directory of the Synapse that scripts/synapse
// started; tests that need a real Synapse skip without it.
const SynapseEnvVar = "FEDPIPE_TEST_SYNAPSE"

// Synapse is a running Synapse, as scripts/synapse describes it in test.json.
type Synapse struct {
	ServerName     string `json:"server_name"`
	FederationAddr string `json:"federation_addr"`
	ClientURL      string `json:"client_url"`
	// CACert is the test CA Synapse trusts for outbound federation and that
	// signed its certificate and FedpipeCert.
	CACert       string `json:"ca_cert"`
	FedpipeCert  string `json:"fedpipe_cert"`
	FedpipeKey   string `json:"fedpipe_key"`
	SharedSecret string `json:"registration_shared_secret"`
	Log          string `json:"log"`
	Database     string `json:"database"`
	Python       string `json:"python"`
	Version      string `json:"version"`
}

// SynapseServer returns the Synapse named by FEDPIPE_TEST_SYNAPSE, or skips the
// test when the variable is unset. A Synapse that is named but does not answer
// fails the test.
func SynapseServer(t testing.TB) *Synapse {
	t.Helper()
	dir := os.Getenv(SynapseEnvVar)
	if dir == "" {
		t.Skip(SynapseEnvVar + " is not set: skipping the tier against a real Synapse " +
			"(run `scripts/synapse start` and set " + SynapseEnvVar + " to the directory it prints, or `make test-synapse`)")
	}
	raw, err := os.ReadFile(filepath.Join(dir, "test.json"))
	if err != nil {
		t.Fatalf("%s=%s: %v (run scripts/synapse start)", SynapseEnvVar, dir, err)
	}
	var s Synapse
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("%s/test.json: %v", dir, err)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(s.ClientURL + "/health")
	if err != nil {
		t.Fatalf("Synapse %s does not answer (scripts/synapse start): %v", s.ServerName, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("Synapse %s /health: %s", s.ServerName, resp.Status)
	}
	return &s
}

// CAPEM is the test CA certificate.
func (s *Synapse) CAPEM(t testing.TB) []byte {
	t.Helper()
	pem, err := os.ReadFile(s.CACert)
	if err != nil {
		t.Fatal(err)
	}
	return pem
}

// FederationClient is an HTTPS client trusting the test CA only.
func (s *Synapse) FederationClient(t testing.TB) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(s.CAPEM(t)) {
		t.Fatalf("%s holds no certificate", s.CACert)
	}
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}
}

// SynapseUser is a user registered on the Synapse, with one device.
type SynapseUser struct {
	UserID, DeviceID, AccessToken string
}

// Register registers a new user through the shared-secret admin API (what
// register_new_matrix_user does).
func (s *Synapse) Register(t testing.TB, localpart string) SynapseUser {
	t.Helper()
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	s.client(t, http.MethodGet, "/_synapse/admin/v1/register", "", nil, &nonce)
	password := "pw-" + localpart
	mac := hmac.New(sha1.New, []byte(s.SharedSecret))
	mac.Write([]byte(nonce.Nonce + "\x00" + localpart + "\x00" + password + "\x00notadmin"))
	var out struct {
		UserID      string `json:"user_id"`
		DeviceID    string `json:"device_id"`
		AccessToken string `json:"access_token"`
	}
	s.client(t, http.MethodPost, "/_synapse/admin/v1/register", "", map[string]any{
		"nonce": nonce.Nonce, "username": localpart, "password": password, "admin": false,
		"mac": hex.EncodeToString(mac.Sum(nil)),
	}, &out)
	if out.AccessToken == "" || out.DeviceID == "" {
		t.Fatalf("registering %s: no access token or device", localpart)
	}
	return SynapseUser{UserID: out.UserID, DeviceID: out.DeviceID, AccessToken: out.AccessToken}
}

// ClientGet calls the client-server API as token, failing the test on any
// status but 200, and decodes the answer into out.
func (s *Synapse) ClientGet(t testing.TB, token, path string, out any) {
	t.Helper()
	s.client(t, http.MethodGet, path, token, nil, out)
}

func (s *Synapse) client(t testing.TB, method, path, token string, body, out any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.ClientURL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %s %s", method, path, resp.Status, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, raw)
		}
	}
}

// LogOffset is the current size of Synapse's log, to read what a test caused
// with LogSince.
func (s *Synapse) LogOffset(t testing.TB) int64 {
	t.Helper()
	st, err := os.Stat(s.Log)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// LogSince returns the log lines written since offset.
func (s *Synapse) LogSince(t testing.TB, offset int64) []string {
	t.Helper()
	f, err := os.Open(s.Log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
}

// Query runs a read-only SQL query on Synapse's SQLite database with Synapse's
// own Python and returns the rows. It reads what Synapse stored where no
// client API shows it (remote users' presence without a shared room).
func (s *Synapse) Query(t testing.TB, query string, args ...string) [][]any {
	t.Helper()
	const script = `import json, sqlite3, sys
c = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True, timeout=10)
print(json.dumps(c.execute(sys.argv[2], sys.argv[3:]).fetchall()))`
	out, err := exec.Command(s.Python, append([]string{"-c", script, s.Database, query}, args...)...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("querying Synapse's database: %v: %s", err, stderr)
	}
	var rows [][]any
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatalf("querying Synapse's database: %v: %s", err, out)
	}
	return rows
}

// FreeLoopbackPort returns a port on 127.0.0.1 that was free a moment ago, for
// a server whose name must carry its port before it listens.
func FreeLoopbackPort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// String names the server for test logs.
func (s *Synapse) String() string { return fmt.Sprintf("Synapse %s at %s", s.Version, s.ServerName) }
