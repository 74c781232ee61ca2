package discovery_test

import (
	"strings"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/discovery"
)

// TestConfigValidateReportsEveryField: Validate reports every invalid field
// at once, each by name, not only the first.
func TestConfigValidateReportsEveryField(t *testing.T) {
	cfg := discovery.Config{Static: map[string]string{"hs.test": "nope"}, WellKnownCacheMin: 2 * time.Hour, WellKnownCacheMax: time.Hour, WellKnownMaxBytes: -1, WellKnownMaxRedirects: -1}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("an invalid configuration was accepted")
	}
	for _, field := range []string{"Static", "WellKnownCacheMin", "WellKnownMaxBytes", "WellKnownMaxRedirects"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("the error does not name %s: %v", field, err)
		}
	}
}
