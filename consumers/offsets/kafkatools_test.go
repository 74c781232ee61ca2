package offsets_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/consumers/offsets"
)

// consumerGroups runs Apache Kafka's kafka-consumer-groups.sh (its class, on the
// classpath scripts/kafka keeps) against the test's broker.
func consumerGroups(t *testing.T, f fixture, args ...string) string {
	t.Helper()
	script, err := filepath.Abs("../../scripts/kafka")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(script, append([]string{"tool", "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand", "--bootstrap-server", f.addr}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kafka-consumer-groups %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// fedpipe offsets and Kafka's own kafka-consumer-groups.sh each see what the
// other wrote. Only on Apache Kafka, whose tools these are.
func TestKafkaConsumerGroupsAgreesWithOffsets(t *testing.T) {
	f := setup(t)
	if !f.k.Apache() {
		t.Skip("needs Apache Kafka's kafka-consumer-groups (the Apache tier: make test-kafka)")
	}
	// What fedpipe committed (offset 4 on both partitions, in setup), Kafka describes.
	out := consumerGroups(t, f, "--describe", "--group", f.group)
	for p := range 2 {
		row := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(f.group) + `\s+` + regexp.QuoteMeta(f.in) + `\s+` + strings.Repeat("", 0) + string(rune('0'+p)) + `\s+4\s+10\s+6\b`)
		if !row.MatchString(out) {
			t.Fatalf("kafka-consumer-groups --describe does not show %s/%d at 4 of 10, lag 6:\n%s", f.in, p, out)
		}
	}
	// What Kafka's tool resets, fedpipe shows.
	consumerGroups(t, f, "--reset-offsets", "--group", f.group, "--topic", f.in+":1", "--to-offset", "7", "--execute")
	rows, err := f.tool.Show(context.Background(), f.group, offsets.Selection{Topics: map[string][]int{f.in: nil}})
	if err != nil {
		t.Fatal(err)
	}
	if rows[0].Current != 4 || rows[1].Current != 7 {
		t.Fatalf("after kafka-consumer-groups --reset-offsets %s:1 to 7, fedpipe shows %+v", f.in, rows)
	}
	// And a reset by datetime plans the same offsets in both tools.
	plan, err := f.tool.Plan(context.Background(), f.group, offsets.Selection{Topics: map[string][]int{f.in: nil}},
		offsets.Target{Mode: offsets.ModeDatetime, Time: t0.Add(3*60e9 - 1e9)})
	if err != nil {
		t.Fatal(err)
	}
	out = consumerGroups(t, f, "--reset-offsets", "--group", f.group, "--topic", f.in, "--to-datetime", t0.Add(3*60e9-1e9).UTC().Format("2006-01-02T15:04:05.000Z"), "--dry-run")
	for _, r := range plan {
		row := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(f.group) + `\s+` + regexp.QuoteMeta(f.in) + `\s+` + string(rune('0'+r.Partition)) + `\s+` + string(rune('0'+r.New)) + `\b`)
		if r.New != 3 || !row.MatchString(out) {
			t.Fatalf("fedpipe plans %s/%d → %d, kafka-consumer-groups plans:\n%s", f.in, r.Partition, r.New, out)
		}
	}
}
