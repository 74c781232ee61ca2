package router_test

import (
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/consumers/router"
)

// TestConfigValidateReportsEveryField: Validate reports every invalid field
// at once, each by name, not only the first.
func TestConfigValidateReportsEveryField(t *testing.T) {
	cfg := router.Config{Prefix: "a b", RoomsPerPartition: -1, TypingPing: -1, TypingTick: -1}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("an invalid configuration was accepted")
	}
	for _, field := range []string{"ServerName", "Prefix", "RoomsPerPartition", "TypingPing", "TypingTick"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("the error does not name %s: %v", field, err)
		}
	}
}
