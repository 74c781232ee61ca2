package runtime_test

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/consumers/runtime"
)

// A partition must be drained (its handler's work cancelled past the drain
// timeout) well before the group's rebalance timeout, or the member is
// expired while it still works and the partition is handled twice at once.
func TestDrainTimeoutIsAtMostHalfTheRebalanceTimeout(t *testing.T) {
	base := func() runtime.Config {
		return runtime.Config{Brokers: []string{"127.0.0.1:9092"}, GroupID: "g", Topics: []string{"t"}, DeadLetterTopic: "d"}
	}
	for _, tc := range []struct {
		name             string
		rebalance, drain time.Duration
		wantErr          bool
		wantDrain        time.Duration
	}{
		{name: "defaults", wantDrain: 5 * time.Second},
		{name: "drain follows the rebalance timeout", rebalance: 2 * time.Second, wantDrain: time.Second},
		{name: "half", rebalance: 60 * time.Second, drain: 30 * time.Second, wantDrain: 30 * time.Second},
		{name: "drain longer than half", rebalance: 10 * time.Second, drain: 6 * time.Second, wantErr: true},
		{name: "drain longer than the rebalance timeout (the old defaults)", rebalance: 10 * time.Second, drain: 30 * time.Second, wantErr: true},
		{name: "negative drain", drain: -time.Second, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			c.RebalanceTimeout, c.DrainTimeout = tc.rebalance, tc.drain
			err := c.Validate()
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), "drain timeout") {
					t.Fatalf("Validate() = %v, want a drain timeout error", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.DrainTimeout != tc.wantDrain {
				t.Fatalf("drain timeout %s, want %s", c.DrainTimeout, tc.wantDrain)
			}
		})
	}
}

// A zero Config takes the exported defaults, which other packages
// (internal/config, admin) show and use as the runtime's.
func TestZeroFieldsTakeTheDefaults(t *testing.T) {
	c := runtime.Config{Brokers: []string{"127.0.0.1:9092"}, GroupID: "g", Topics: []string{"t"}, DeadLetterTopic: "d"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	want := runtime.Config{Brokers: c.Brokers, GroupID: "g", Topics: c.Topics, DeadLetterTopic: "d",
		Instance:           runtime.DefaultInstance,
		CommitInterval:     runtime.DefaultCommitInterval,
		SessionTimeout:     runtime.DefaultSessionTimeout,
		RebalanceTimeout:   runtime.DefaultRebalanceTimeout,
		HeartbeatInterval:  runtime.DefaultHeartbeatInterval,
		StartOffset:        kafka.FirstOffset,
		MaxWait:            runtime.DefaultMaxWait,
		DrainTimeout:       runtime.DefaultDrainTimeout,
		MaxInFlight:        runtime.DefaultMaxInFlight,
		StallAfter:         runtime.DefaultStallAfter,
		StallCheckInterval: runtime.DefaultStallCheckInterval,
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("Validate filled\n%+v\nwant\n%+v", c, want)
	}
}

// Every missing required field is reported, each by name.
func TestValidateNamesEveryMissingField(t *testing.T) {
	var c runtime.Config
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate() of an empty Config = nil")
	}
	for _, field := range []string{"Brokers", "GroupID", "Topics", "DeadLetterTopic"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("Validate() = %v, does not name %s", err, field)
		}
	}
}
