package presence_test

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/consumers/presence"
	fedpresence "github.com/fedpipe/fedpipe/federation/presence"
)

// The stage refuses timers that let remote servers time users out between
// pings (the rule is fedpresence.Timers.Validate).
func TestConfigRefusesPingsTooRareForRemotes(t *testing.T) {
	cfg := presence.Config{ServerName: "hs", Prefix: "p", Timers: fedpresence.Timers{SyncTimeout: time.Second, Idle: time.Second, Granularity: time.Minute, Ping: 29 * time.Minute}}
	if _, err := presence.New(cfg, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), nil); err == nil {
		t.Error("a ping interval that lets remotes time users out was accepted")
	}
	if err := cfg.Validate(); err == nil {
		t.Error("Validate accepted a ping interval that lets remotes time users out")
	}
}
