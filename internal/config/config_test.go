package config

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
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
	want := Default()
	want.Instance = HostInstance()
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
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

// The example leaves instance empty, which means this host's name wherever
// the file is used, so a copied file does not give every host one instance.
func TestInstanceIsTheHostNameWhenEmpty(t *testing.T) {
	if !strings.Contains(string(Example()), "\ninstance: \"\"\n") {
		t.Errorf("the example does not leave instance empty:\n%s", Example())
	}
	for _, tc := range []struct{ name, file, want string }{
		{"absent", "server_name: a.example\n", HostInstance()},
		{"empty", "instance: \"\"\n", HostInstance()},
		{"set", "instance: router-7\n", "router-7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load(writeFile(t, tc.file), nil, nil)
			if err != nil || cfg.Instance != tc.want {
				t.Fatalf("instance %q (%v), want %q", cfg.Instance, err, tc.want)
			}
		})
	}
	if cfg, err := Load("", []string{"FEDPIPE_INSTANCE="}, nil); err != nil || cfg.Instance != HostInstance() {
		t.Fatalf("FEDPIPE_INSTANCE= gives %q (%v), want the host name", cfg.Instance, err)
	}
}

func TestFlagsHaveTheKeysTypes(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	RegisterFlags(fs, "kafka", "relay.poll_interval", "federation")
	var names []string
	types := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) {
		names = append(names, f.Name)
		types[f.Name] = f.Value.(interface{ Type() string }).Type()
	})
	for _, k := range Keys() {
		in := strings.HasPrefix(k, "kafka.") || strings.HasPrefix(k, "federation.") || k == "relay.poll_interval"
		if in != slices.Contains(names, k) {
			t.Errorf("flag for %s registered: %v, want %v", k, !in, in)
		}
	}
	for name, want := range map[string]string{"kafka.brokers": "list", "kafka.partitions": "int", "kafka.topic_prefix": "string",
		"relay.poll_interval": "duration", "federation.static": "map", "federation.insecure_skip_verify": "bool"} {
		if types[name] != want {
			t.Errorf("--%s is a %s, want %s", name, types[name], want)
		}
	}
	if f := fs.Lookup("kafka.partitions"); f.DefValue != "16" {
		t.Errorf("--kafka.partitions default %q, want 16", f.DefValue)
	}
	if err := fs.Parse([]string{"--kafka.partitions=many"}); err == nil || !strings.Contains(err.Error(), "not an integer") {
		t.Errorf("a bad integer was parsed: %v", err)
	}
	if err := fs.Parse([]string{"--federation.insecure_skip_verify", "--relay.poll_interval=20ms"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load("", nil, fs)
	if err != nil || !cfg.Federation.InsecureSkipVerify || cfg.Relay.PollInterval != 20*time.Millisecond || cfg.Kafka.Partitions != 16 {
		t.Errorf("flags applied as %+v (%v)", cfg, err)
	}
	defer func() {
		if recover() == nil {
			t.Error("a scope naming no key was accepted")
		}
	}()
	RegisterFlags(flag.NewFlagSet("t", flag.ContinueOnError), "kafka.brokerz")
}
