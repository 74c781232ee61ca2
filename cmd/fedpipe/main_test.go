package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/internal/config"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := dispatch(context.Background(), args, &out, &errb)
	return out.String() + errb.String(), err
}

func TestKeygen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signing.key")
	out, err := run(t, "keygen", "--out", path)
	if err != nil || !strings.Contains(out, "ed25519:") {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v %v", st, err)
	}
	if _, err := run(t, "keygen", "--out", path); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second keygen: %v", err)
	}
	if _, err := run(t, "keygen"); err == nil {
		t.Fatal("keygen without --out succeeded")
	}
}

func TestConfigCommands(t *testing.T) {
	out, err := run(t, "config", "example")
	if err != nil || !strings.Contains(out, "server_name:") {
		t.Fatalf("config example: %v\n%s", err, out)
	}
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, "config", "check", "--config", path); err != nil || !strings.Contains(out, "valid") {
		t.Fatalf("config check of the example: %v %s", err, out)
	}
	if err := os.WriteFile(path, []byte("kafka:\n  brokerz: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, "config", "check", "--config", path); err == nil || !strings.Contains(err.Error(), "kafka.brokerz") {
		t.Fatalf("bad key not named: %v", err)
	}
}

// runCode runs a command line as main does and returns its exit code and output.
func runCode(args ...string) (int, string) {
	var out bytes.Buffer
	code := runMain(context.Background(), args, &out, &out)
	return code, out.String()
}

func TestUnknownCommandsAndArguments(t *testing.T) {
	for _, args := range [][]string{
		{}, {"frobnicate"}, {"config"}, {"config", "frob"}, {"topics"}, {"topics", "delete"},
		{"sender", "--stages=relay"}, // only run picks stages
		{"keygen", "--kafka.brokers=k:9092"},
		{"migrate", "--kafka.brokers=k:9092"},
		{"run", "--stages=relay,frob"},
		{"topics", "create", "extra"},
		{"config", "check", "--kafka.partitions=many"},
	} {
		if code, out := runCode(args...); code != 1 || out == "" {
			t.Errorf("fedpipe %q exits %d, want 1 with a message; printed:\n%s", args, code, out)
		}
	}
}

// flagsOf reads the flags and their types from a command's --help.
func flagsOf(out string) map[string]string {
	flags := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "  --") {
			continue
		}
		f := strings.Fields(line)
		typ := ""
		if len(f) > 1 {
			typ = f[1]
		}
		flags[strings.TrimPrefix(f[0], "--")] = typ
	}
	return flags
}

// TestEveryCommandsHelp: every command and subcommand answers --help, -h and
// `fedpipe help <command>` with exit code 0, and lists exactly the flags it
// uses: the configuration keys it reads (a stage: infra plus its own section)
// and its own flags, each with its type.
func TestEveryCommandsHelp(t *testing.T) {
	// Per command: its own flags, then the configuration keys it reads ("" is every key).
	type flags struct{ own, keys []string }
	tool := []string{"instance", "data_dir", "log_level", "kafka", "database"}
	infra := append(slices.Clip(tool), "admin")
	sending := []string{"federation.static", "federation.ca_file", "federation.insecure_skip_verify", "federation.allowed_networks",
		"federation.request_timeout", "federation.backoff_initial", "federation.backoff_max", "federation.max_transaction_bytes", "federation.linger"}
	publishing := []string{"federation.listen", "federation.tls_cert", "federation.tls_key", "federation.key_validity"}
	for _, k := range config.Keys() {
		if strings.HasPrefix(k, "federation.") && !slices.Contains(sending, k) && !slices.Contains(publishing, k) {
			t.Errorf("configuration key %s is read by neither the sender nor the keys stage here: list it under the one that reads it", k)
		}
	}
	want := map[string]flags{
		"keygen":         {[]string{"out"}, nil},
		"config example": {nil, nil},
		"config check":   {[]string{"config"}, []string{""}},
		"migrate":        {[]string{"config"}, []string{"database.url"}},
		"topics create":  {[]string{"config"}, []string{"log_level", "kafka.brokers", "kafka.topic_prefix", "kafka.partitions", "kafka.outbound_partitions", "kafka.replication_factor"}},
		"run":            {[]string{"config", "stages"}, []string{""}},
		"demo":           {[]string{"config", "rooms", "servers", "events", "timeout"}, []string{""}},
		"bench": {[]string{"config", "rooms", "servers", "events", "rate", "timeout"}, append([]string{"server_name", "relay", "router",
			"federation.request_timeout", "federation.backoff_initial", "federation.backoff_max", "federation.max_transaction_bytes", "federation.linger"}, tool...)},
		"relay":          {[]string{"config"}, append([]string{"relay"}, infra...)},
		"presence":       {[]string{"config"}, append([]string{"server_name", "presence"}, infra...)},
		"router":         {[]string{"config"}, append([]string{"server_name", "router"}, infra...)},
		"sender":         {[]string{"config"}, append(append([]string{"server_name", "signing_key_path"}, sending...), infra...)},
		"ingest":         {[]string{"config"}, append([]string{"server_name", "ingest"}, infra...)},
		"soak":           {[]string{"dir", "keep", "seed", "kills", "rooms", "servers", "events", "stall_bound", "drain", "progress", "log_level", "bin", "brokers", "broker_restart"}, nil},
		"keys":           {[]string{"config"}, append(append([]string{"server_name", "signing_key_path"}, publishing...), infra...)},
		"status":         {[]string{"config", "url"}, []string{"admin.listen", "admin.token"}},
		"version":        {nil, nil},
		"rebuild router": {[]string{"config"}, tool},
		"resend":         {[]string{"config", "destination", "from-position", "from-time"}, append([]string{"server_name"}, tool...)},
		"offsets show":   {[]string{"config", "group", "topic", "all-topics"}, []string{"log_level", "kafka.brokers", "kafka.embedded_port"}},
		"offsets reset": {[]string{"config", "group", "topic", "all-topics", "to-earliest", "to-latest", "to-offset", "shift-by", "to-datetime", "by-duration", "execute"},
			[]string{"log_level", "kafka.brokers", "kafka.embedded_port"}},
	}
	subcommands := map[string][]string{"config": {"check", "example"}, "topics": {"create"}, "offsets": {"show", "reset"}, "rebuild": {"router"}}
	for name := range commands() {
		if _, ok := want[name]; !ok && subcommands[name] == nil {
			t.Errorf("command %s has no expected flags here", name)
		}
	}
	for name, subs := range subcommands {
		for _, help := range [][]string{{name, "--help"}, {name, "-h"}, {"help", name}} {
			code, out := runCode(help...)
			if code != 0 {
				t.Errorf("fedpipe %q exits %d", help, code)
			}
			for _, s := range subs {
				if !strings.Contains(out, "\n  "+s+" ") {
					t.Errorf("fedpipe %q does not list subcommand %s:\n%s", help, s, out)
				}
			}
		}
	}
	types := map[string]string{"config": "file", "out": "file", "stages": "list", "rooms": "int", "timeout": "duration",
		"kafka.brokers": "list", "kafka.partitions": "int", "log_level": "string", "relay.poll_interval": "duration",
		"federation.static": "map", "federation.insecure_skip_verify": "", "ingest.max_body_bytes": "int"}
	for cmd, w := range want {
		wantFlags := map[string]bool{}
		for _, f := range w.own {
			wantFlags[f] = true
		}
		for _, k := range config.Keys() {
			if slices.ContainsFunc(w.keys, func(s string) bool { return s == "" || k == s || strings.HasPrefix(k, s+".") }) {
				wantFlags[k] = true
			}
		}
		args := strings.Fields(cmd)
		for _, help := range [][]string{append(args, "--help"), append(args, "-h"), append([]string{"help"}, args...)} {
			code, out := runCode(help...)
			if code != 0 || !strings.Contains(out, "usage: fedpipe "+cmd+" ") {
				t.Errorf("fedpipe %q exits %d, printing:\n%s", help, code, out)
				continue
			}
			got := flagsOf(out)
			for f := range wantFlags {
				if _, ok := got[f]; !ok {
					t.Errorf("fedpipe %s --help lacks --%s", cmd, f)
				}
			}
			for f, typ := range got {
				if !wantFlags[f] {
					t.Errorf("fedpipe %s --help lists --%s, which it does not use", cmd, f)
				}
				if want, ok := types[f]; ok && typ != want || typ == "value" {
					t.Errorf("fedpipe %s --help: --%s is a %q, want %q", cmd, f, typ, types[f])
				}
			}
		}
	}
}

// fedpipe version names itself and the Go toolchain it was built with.
func TestVersion(t *testing.T) {
	code, out := runCode("version")
	if code != 0 || !strings.HasPrefix(out, "fedpipe ") || !strings.Contains(out, "go1.") {
		t.Fatalf("fedpipe version exits %d, printing:\n%s", code, out)
	}
}

// The sender counts the outbound topic's partitions as the brokers have them,
// whatever kafka.outbound_partitions says: the router's writer spreads
// destinations over the real ones.
func TestSenderTakesTheOutboundTopicsPartitionCount(t *testing.T) {
	k := testenv.NewKafka(t)
	outbound := k.CreateTopic(t, "outbound", 3, nil)
	addr := k.Addr
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	n, err := outboundPartitions(context.Background(), []string{addr}, outbound, 32, log)
	if err != nil || n != 3 {
		t.Fatalf("outboundPartitions = %d, %v; want the topic's 3", n, err)
	}
	if !strings.Contains(logs.String(), "differs from kafka.outbound_partitions") {
		t.Errorf("the mismatch was not reported: %q", logs.String())
	}
	if _, err := outboundPartitions(context.Background(), []string{addr}, k.Topic("missing"), 32, log); err == nil {
		t.Error("a missing outbound topic was not an error")
	}
}
