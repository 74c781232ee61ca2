package sender_test

import (
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/consumers/sender"
	"github.com/fedpipe/fedpipe/federation/queue"
)

// TestConfigValidateReportsEveryField: Validate reports every invalid field
// at once, each by name, not only the first.
func TestConfigValidateReportsEveryField(t *testing.T) {
	cfg := sender.Config{Queue: queue.Config{BackoffMultiplier: 0.5}}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("an invalid configuration was accepted")
	}
	for _, field := range []string{"OutboundPartitions", "Origin", "BackoffMultiplier"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("the error does not name %s: %v", field, err)
		}
	}
}
