package client_test

import (
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/federation/client"
)

// TestConfigValidateReportsEveryField: Validate reports every invalid field
// at once, each by name, not only the first.
func TestConfigValidateReportsEveryField(t *testing.T) {
	cfg := client.Config{AllowedNetworks: []string{"nope"}, RetriesPerRequest: -1, MaxConnsPerHost: -1, MaxResponseBytes: -1}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("an invalid configuration was accepted")
	}
	for _, field := range []string{"Origin", "AllowedNetworks", "RetriesPerRequest", "MaxConnsPerHost", "MaxResponseBytes"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("the error does not name %s: %v", field, err)
		}
	}
}
