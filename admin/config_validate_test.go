package admin_test

import (
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/admin"
)

// TestConfigValidateReportsEveryField: Validate reports every invalid field
// at once, each by name, not only the first.
func TestConfigValidateReportsEveryField(t *testing.T) {
	cfg := admin.Config{Brokers: []string{"b:9092"}}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("an invalid configuration was accepted")
	}
	for _, field := range []string{"DeadLetterTopic", "RoomTopic", "RouterGroup"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("the error does not name %s: %v", field, err)
		}
	}
}
