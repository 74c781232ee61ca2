package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
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

// docker-compose.yml wires deploy/ in: Prometheus loads the alert rules and
// scrapes the admin port of every fedpipe stage service with the admin token,
// and Grafana provisions that Prometheus as its default data source and the
// dashboard from the path its provider reads. (No container engine here: the
// stack is checked as files.)
func TestComposeWiresMetricsAlertsAndDashboard(t *testing.T) {
	read := func(path string, v any) {
		t.Helper()
		raw, err := os.ReadFile("../../" + path)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(raw, v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	type service struct {
		Image       string            `yaml:"image"`
		Command     []string          `yaml:"command"`
		Entrypoint  []string          `yaml:"entrypoint"`
		Environment map[string]string `yaml:"environment"`
		Volumes     []string          `yaml:"volumes"`
	}
	var compose struct {
		XFedpipe struct {
			Environment map[string]string `yaml:"environment"`
		} `yaml:"x-fedpipe"`
		Services map[string]service `yaml:"services"`
	}
	read("docker-compose.yml", &compose)
	// mounts maps a service's container paths to the repository files mounted there.
	mounts := func(name string) map[string]string {
		m := map[string]string{}
		for _, v := range compose.Services[name].Volumes {
			parts := strings.Split(v, ":")
			if strings.HasPrefix(parts[0], "./") {
				m[parts[1]] = strings.TrimPrefix(parts[0], "./")
				if _, err := os.Stat("../../" + m[parts[1]]); err != nil {
					t.Errorf("service %s mounts %s: %v", name, parts[0], err)
				}
			}
		}
		return m
	}

	prom := compose.Services["prometheus"]
	pm := mounts("prometheus")
	if pm["/etc/prometheus/prometheus.yml"] != "deploy/prometheus/prometheus.yml" {
		t.Fatalf("prometheus mounts %v: want deploy/prometheus/prometheus.yml as its configuration", pm)
	}
	if !strings.Contains(strings.Join(prom.Command, " "), "--config.file=/etc/prometheus/prometheus.yml") ||
		!strings.Contains(strings.Join(prom.Command, " "), `"$$FEDPIPE_ADMIN_TOKEN" > /prometheus/admin-token`) ||
		!strings.HasPrefix(prom.Environment["FEDPIPE_ADMIN_TOKEN"], "${FEDPIPE_ADMIN_TOKEN:?") {
		t.Fatalf("prometheus runs %v with %v: want the configuration file and the admin token written where it reads it", prom.Command, prom.Environment)
	}
	var promConf struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			Authorization struct {
				CredentialsFile string `yaml:"credentials_file"`
			} `yaml:"authorization"`
			DNS []struct {
				Names []string `yaml:"names"`
				Port  int      `yaml:"port"`
			} `yaml:"dns_sd_configs"`
		} `yaml:"scrape_configs"`
	}
	read("deploy/prometheus/prometheus.yml", &promConf)
	if len(promConf.RuleFiles) != 1 || pm[promConf.RuleFiles[0]] != "deploy/prometheus/alerts.yml" {
		t.Errorf("prometheus loads rules %v, mounted from %v: want deploy/prometheus/alerts.yml", promConf.RuleFiles, pm)
	}
	if len(promConf.ScrapeConfigs) != 1 || len(promConf.ScrapeConfigs[0].DNS) != 1 {
		t.Fatalf("prometheus scrape configs %+v: want one, by DNS", promConf.ScrapeConfigs)
	}
	sc := promConf.ScrapeConfigs[0]
	if sc.Authorization.CredentialsFile != "/prometheus/admin-token" {
		t.Errorf("prometheus reads the token from %q", sc.Authorization.CredentialsFile)
	}
	_, port, _ := strings.Cut(compose.XFedpipe.Environment["FEDPIPE_ADMIN_LISTEN"], ":")
	if fmt.Sprint(sc.DNS[0].Port) != port {
		t.Errorf("prometheus scrapes port %d, the admin listener is on %q", sc.DNS[0].Port, port)
	}
	for name, svc := range compose.Services {
		if svc.Image == "fedpipe:latest" && svc.Entrypoint == nil && !slices.Contains(sc.DNS[0].Names, name) {
			t.Errorf("fedpipe service %s is not scraped (names %v)", name, sc.DNS[0].Names)
		}
	}

	gm := mounts("grafana")
	var dashboards struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	var sources struct {
		Datasources []struct {
			Type      string `yaml:"type"`
			URL       string `yaml:"url"`
			IsDefault bool   `yaml:"isDefault"`
		} `yaml:"datasources"`
	}
	if gm["/etc/grafana/provisioning"] != "deploy/grafana/provisioning" {
		t.Fatalf("grafana mounts %v: want deploy/grafana/provisioning as its provisioning", gm)
	}
	read("deploy/grafana/provisioning/dashboards/fedpipe.yml", &dashboards)
	read("deploy/grafana/provisioning/datasources/prometheus.yml", &sources)
	if len(dashboards.Providers) != 1 || gm[dashboards.Providers[0].Options.Path+"/fedpipe.json"] != "deploy/grafana/fedpipe.json" {
		t.Errorf("grafana's dashboard provider reads %+v, mounts %v: want deploy/grafana/fedpipe.json there", dashboards.Providers, gm)
	}
	if len(sources.Datasources) != 1 || sources.Datasources[0].Type != "prometheus" || sources.Datasources[0].URL != "http://prometheus:9090" || !sources.Datasources[0].IsDefault {
		t.Errorf("grafana's data sources %+v: want the compose Prometheus as the default", sources.Datasources)
	}
}
