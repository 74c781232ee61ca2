package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/fedpipe/fedpipe/internal/config"
)

// docker-compose.yml is documentation that must stay true to the code: every
// fedpipe service runs a real command, and every FEDPIPE_* variable it sets is a
// configuration key.
func TestComposeFileMatchesTheCLI(t *testing.T) {
	raw, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Services map[string]struct {
			Command     any               `yaml:"command"`
			Entrypoint  any               `yaml:"entrypoint"`
			Environment map[string]string `yaml:"environment"`
			Image       string            `yaml:"image"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, k := range config.Keys() {
		known[config.EnvName(k)] = true
	}
	cmds := commands()
	stages := 0
	for name, svc := range doc.Services {
		if svc.Image != "fedpipe:latest" {
			continue
		}
		for k := range svc.Environment {
			if strings.HasPrefix(k, "FEDPIPE_") && !known[k] {
				t.Errorf("service %s sets %s, which is no configuration key", name, k)
			}
		}
		cmd, _ := svc.Command.([]any)
		if len(cmd) == 0 {
			t.Errorf("service %s has no command", name)
			continue
		}
		if svc.Entrypoint != nil { // the init service: a shell script
			script, _ := cmd[0].(string)
			for _, want := range []string{"fedpipe keygen", "fedpipe migrate", "fedpipe topics create"} {
				if !strings.Contains(script, want) {
					t.Errorf("service %s does not run %q", name, want)
				}
			}
			continue
		}
		if _, ok := cmds[cmd[0].(string)]; !ok {
			t.Errorf("service %s runs unknown command %v", name, cmd[0])
		}
		stages++
	}
	if stages < 4 {
		t.Fatalf("found %d stage services, want relay, ingest, router and sender", stages)
	}
}

// TestComposeSetsTokensForOpenListeners: compose binds ingest and admin to
// every interface of the container, so it must give both a token.
func TestComposeSetsTokensForOpenListeners(t *testing.T) {
	raw, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"FEDPIPE_INGEST_TOKEN: ${FEDPIPE_INGEST_TOKEN:?", "FEDPIPE_ADMIN_TOKEN: ${FEDPIPE_ADMIN_TOKEN:?"} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("docker-compose.yml lacks %q", want)
		}
	}
}

func TestAdminTokenIsRequired(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	srv := httptest.NewServer(requireBearer("t0ken", ok))
	defer srv.Close()
	for auth, want := range map[string]int{"": 401, "Bearer guess": 401, "Bearer t0ken": 204} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/metrics", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("Authorization %q: %d, want %d", auth, resp.StatusCode, want)
		}
	}
}

// docker-compose accepts docker-compose.yml (its own validation, `config
// -q`), and refuses to start the stack without the admin and ingest tokens,
// which the file requires rather than defaulting.
func TestComposeFileValidates(t *testing.T) {
	compose, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Skip("no docker-compose to validate docker-compose.yml with: apt-get install -y docker-compose (make test installs it)")
	}
	check := func(env ...string) (string, error) {
		cmd := exec.Command(compose, "-f", "../../docker-compose.yml", "config", "-q")
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := check("FEDPIPE_ADMIN_TOKEN=a", "FEDPIPE_INGEST_TOKEN=i"); err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, out)
	}
	if out, err := check("FEDPIPE_ADMIN_TOKEN=", "FEDPIPE_INGEST_TOKEN="); err == nil || !strings.Contains(out, "FEDPIPE_ADMIN_TOKEN") {
		t.Fatalf("docker-compose config without tokens: %v\n%s; want a refusal naming FEDPIPE_ADMIN_TOKEN", err, out)
	}
}
