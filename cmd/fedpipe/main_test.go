package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/internal/testenv"
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

func TestUnknownCommand(t *testing.T) {
	if _, err := run(t, "frobnicate"); err == nil {
		t.Fatal("unknown command accepted")
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
