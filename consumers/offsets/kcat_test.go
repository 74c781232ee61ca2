package offsets_test

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/consumers/offsets"
)

// kcat, joining the group as a consumer (librdkafka's client, not
// kafka-go's), starts each partition at the offset a reset committed: it sees
// what fedpipe offsets wrote. Skipped without kcat (make test installs it).
func TestKcatSeesAReset(t *testing.T) {
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Skip("no kcat: apt-get install -y kcat (make test installs it)")
	}
	f := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	plan, err := f.tool.Plan(ctx, f.group, offsets.Selection{Topics: map[string][]int{f.in: nil}}, offsets.Target{Mode: offsets.ModeOffset, Offset: 7})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.tool.Execute(ctx, f.group, plan); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, kcat, "-b", f.addr, "-G", f.group, "-e", "-q", "-f", "%p %o\n", f.in)
	var stderr strings.Builder
	cmd.Stderr = &stderr // librdkafka's configuration warnings
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kcat: %v\n%s%s", err, out, stderr.String())
	}
	got := strings.Split(strings.TrimSpace(string(out)), "\n")
	slices.Sort(got)
	if want := []string{"0 7", "0 8", "0 9", "1 7", "1 8", "1 9"}; !slices.Equal(got, want) {
		t.Fatalf("kcat in group %s read (partition offset) %q, want %q: each partition from the reset's 7", f.group, got, want)
	}
}
