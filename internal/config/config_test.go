package config

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fedpipe.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestExampleParsesToDefaults(t *testing.T) {
	got, err := Load(writeFile(t, string(Example())), nil, nil)
	if err != nil {
		t.Fatalf("the printed example does not load: %v\n%s", err, Example())
	}
	if want := Default(); fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Fatalf("example loads as\n%+v\nwant the defaults\n%+v", got, want)
	}
	for _, k := range Keys() {
		last := k[strings.LastIndex(k, ".")+1:]
		if !strings.Contains(string(Example()), last+":") {
			t.Errorf("example lacks key %s", k)
		}
	}
}

func TestPrecedence(t *testing.T) {
	file := writeFile(t, "server_name: file.example\nkafka:\n  brokers: [\"k1:9092\"]\n  partitions: 4\nrelay:\n  poll_interval: 20ms\n")
	env := []string{"FEDPIPE_KAFKA_PARTITIONS=8", "FEDPIPE_FEDERATION_STATIC=a.example=127.0.0.1:1,b.example=127.0.0.1:2", "PATH=/bin"}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	RegisterFlags(fs)
	if err := fs.Parse([]string{"--kafka.partitions=12", "--server_name=flag.example"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(file, env, fs)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName != "flag.example" || cfg.Kafka.Partitions != 12 {
		t.Errorf("flags did not win: %+v", cfg)
	}
	if !reflect.DeepEqual(cfg.Kafka.Brokers, []string{"k1:9092"}) || cfg.Relay.PollInterval != 20*time.Millisecond {
		t.Errorf("file values lost: %+v", cfg)
	}
	if cfg.Federation.Static["b.example"] != "127.0.0.1:2" || len(cfg.Federation.Static) != 2 {
		t.Errorf("env map not applied: %+v", cfg.Federation.Static)
	}
}

func TestErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		env        []string
		want       string
	}{
		{"unknown top-level key", "servername: x\n", nil, "unknown key servername"},
		{"unknown nested key", "kafka:\n  brokerz: [a]\n", nil, "unknown key kafka.brokerz"},
		{"bad duration in file", "relay:\n  poll_interval: soon\n", nil, "poll_interval"},
		{"negative partitions", "kafka:\n  partitions: -1\n", nil, "kafka.partitions"},
		{"bad broker", "kafka:\n  brokers: [nohostport]\n", nil, "kafka.brokers[0]"},
		{"unknown env key", "", []string{"FEDPIPE_KAFKA_BROKERZ=x"}, "FEDPIPE_KAFKA_BROKERZ"},
		{"bad env int", "", []string{"FEDPIPE_KAFKA_PARTITIONS=many"}, "kafka.partitions"},
		{"bad cidr", "federation:\n  allowed_networks: [10.0.0.0]\n", nil, "federation.allowed_networks[0]"},
		{"backoff max below initial", "federation:\n  backoff_initial: 1h\n  backoff_max: 1m\n", nil, "federation.backoff_max"},
		{"log level", "log_level: loud\n", nil, "log_level"},
		{"drain longer than half the rebalance timeout", "kafka:\n  rebalance_timeout: 10s\n  drain_timeout: 30s\n", nil, "kafka.drain_timeout"},
		{"default drain with a short rebalance timeout", "kafka:\n  rebalance_timeout: 8s\n", nil, "kafka.drain_timeout"},
		{"federation cert without key", "federation:\n  listen: 127.0.0.1:8448\n  tls_cert: /c.pem\n", nil, "federation.tls_cert"},
		{"federation listen not host:port", "federation:\n  listen: \"8448\"\n", nil, "federation.listen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := ""
			if tc.file != "" {
				path = writeFile(t, tc.file)
			}
			_, err := Load(path, tc.env, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to name %q", err, tc.want)
			}
		})
	}
}

func TestMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"), nil, nil)
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("got %v", err)
	}
}

// TestListenersOffLoopbackNeedATokens: the ingest API decides room membership
// and local users' presence; served beyond loopback without a token, anyone on
// the network could route a room's events to their server.
func TestListenersOffLoopbackNeedATokens(t *testing.T) {
	for _, c := range []struct {
		name, ingest, ingestToken, admin, adminToken string
		errs                                         []string
	}{
		{"defaults on loopback", "127.0.0.1:8008", "", "127.0.0.1:9100", "", nil},
		{"localhost and IPv6 loopback", "localhost:8008", "", "[::1]:9100", "", nil},
		{"ingest on every interface", "0.0.0.0:8008", "", "127.0.0.1:9100", "", []string{"ingest.token: must be set when ingest.listen"}},
		{"empty host", ":8008", "", "", "", []string{"ingest.token"}},
		{"admin on a name", "127.0.0.1:8008", "", "fedpipe.internal:9100", "", []string{"admin.token: must be set when admin.listen"}},
		{"both off loopback", "10.0.0.5:8008", "", "0.0.0.0:9100", "", []string{"ingest.token", "admin.token"}},
		{"tokens set", "0.0.0.0:8008", "s3cret", "0.0.0.0:9100", "t0ken", nil},
		{"not served", "", "", "", "", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := Default()
			cfg.Ingest.Listen, cfg.Ingest.Token, cfg.Admin.Listen, cfg.Admin.Token = c.ingest, c.ingestToken, c.admin, c.adminToken
			err := cfg.Validate()
			if len(c.errs) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, want errors naming %v", c.errs)
			}
			for _, want := range c.errs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
		})
	}
}
