package presence_test

import (
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/consumers/presence"
)

// TestConfigValidateReportsEveryField: Validate reports every invalid field
// at once, each by name, not only the first.
func TestConfigValidateReportsEveryField(t *testing.T) {
	cfg := presence.Config{InstanceTimeout: -1, SweepInterval: -1, SweepBatch: -1}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("an invalid configuration was accepted")
	}
	for _, field := range []string{"ServerName", "Prefix", "InstanceTimeout", "SweepInterval", "SweepBatch"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("the error does not name %s: %v", field, err)
		}
	}
}
