package queue_test

import (
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/federation/queue"
)

// TestConfigValidateReportsEveryField: Validate reports every invalid field
// at once, each by name, not only the first.
func TestConfigValidateReportsEveryField(t *testing.T) {
	cfg := queue.Config{MaxTransactionBytes: 1000, BackoffMultiplier: 0.5, RetryAttempts: -2, StoreAttempts: -1}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("an invalid configuration was accepted")
	}
	for _, field := range []string{"Origin", "MaxTransactionBytes", "BackoffMultiplier", "RetryAttempts", "StoreAttempts"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("the error does not name %s: %v", field, err)
		}
	}
}
