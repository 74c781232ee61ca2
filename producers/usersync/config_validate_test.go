package usersync_test

import (
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/producers/usersync"
)

// TestConfigValidateReportsEveryField: Validate reports every invalid field
// at once, each by name, not only the first.
func TestConfigValidateReportsEveryField(t *testing.T) {
	cfg := usersync.Config{AliveInterval: -1, ClearTimeout: -1, MaxAliveFailures: -1}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("an invalid configuration was accepted")
	}
	for _, field := range []string{"Instance", "Brokers", "AliveInterval", "ClearTimeout", "MaxAliveFailures"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("the error does not name %s: %v", field, err)
		}
	}
}
