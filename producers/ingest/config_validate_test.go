package ingest_test

import (
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/producers/ingest"
)

// TestConfigValidateReportsEveryField: Validate reports every invalid field
// at once, each by name, not only the first.
func TestConfigValidateReportsEveryField(t *testing.T) {
	cfg := ingest.Config{MaxBodyBytes: -1, MaxEvents: -1, MaxUpdates: -1}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("an invalid configuration was accepted")
	}
	for _, field := range []string{"MaxBodyBytes", "MaxEvents", "MaxUpdates"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("the error does not name %s: %v", field, err)
		}
	}
}
