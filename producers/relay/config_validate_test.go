package relay_test

import (
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/producers/relay"
)

// TestConfigValidateReportsEveryField: Validate reports every invalid field
// at once, each by name, not only the first.
func TestConfigValidateReportsEveryField(t *testing.T) {
	cfg := relay.Config{PollInterval: -1, BatchSize: -1, MaxRoundRecords: -1}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("an invalid configuration was accepted")
	}
	for _, field := range []string{"Instance", "PollInterval", "BatchSize", "MaxRoundRecords"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("the error does not name %s: %v", field, err)
		}
	}
}
