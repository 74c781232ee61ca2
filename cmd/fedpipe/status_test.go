package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/federation/testreceiver"
	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/testing/loadgen"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

// seedAdminExamples gives docs/openapi.yaml's admin examples something to act
// on: remote.example backing off with a room to catch up, and a dead letter
// at partition 0, offset 0 from the usersync topic.
func seedAdminExamples(t *testing.T, p *pipeline) {
	t.Helper()
	ctx := context.Background()
	if _, err := p.in.pool.Exec(ctx, `INSERT INTO sender_destinations (destination, retry_interval_ms, next_attempt_ms, failure_ts, retry_last_ts)
		VALUES ('remote.example', 600000, 9000000000000, 1000, 2000)`); err != nil {
		t.Fatal(err)
	}
	if _, err := p.in.pool.Exec(ctx, `INSERT INTO sender_catchup (destination, room_id, position, event_id) VALUES ('remote.example', '!r:hs.test', 1, '$e')`); err != nil {
		t.Fatal(err)
	}
	prefix := p.in.cfg.Kafka.TopicPrefix
	w := kafkaio.NewWriter(p.in.brokers, schema.Topic(prefix, "deadletter"))
	w.Balancer = kafka.BalancerFunc(func(_ kafka.Message, partitions ...int) int { return partitions[0] })
	defer w.Close()
	if err := w.WriteMessages(ctx, kafka.Message{Key: []byte("sync1"), Value: []byte("not json"), Headers: []kafka.Header{
		{Key: "deadletter_reason", Value: []byte("decoding: invalid character")}, {Key: "source_topic", Value: []byte(schema.Topic(prefix, "usersync"))},
		{Key: "source_partition", Value: []byte("0")}, {Key: "source_offset", Value: []byte("0")}}}); err != nil {
		t.Fatal(err)
	}
}

// statusPipeline is a running pipeline with one destination failing, one
// paused, a poison record dead-lettered by the router, and a usersync record no
// presence member consumes (a stalled partition).
func statusPipeline(t *testing.T) *pipeline {
	t.Helper()
	p := newPipeline(t, remotes(3))
	p.in.cfg.Admin.Listen = "127.0.0.1:0"
	p.in.cfg.Admin.Token = "adm1n"
	p.in.cfg.Kafka.StallAfter = time.Second
	p.recv.SetFault("remote0.test", testreceiver.Fault{Status: http.StatusInternalServerError})
	p.start("relay", "router", "sender", "ingest")
	ctx := context.Background()
	plan := p.plan(5, 60, 1)
	persist := loadgen.HTTPPersister(http.DefaultClient, "http://"+p.in.listeners["ingest"]+"/_fedpipe/v1/events", "")
	if _, err := plan.Ingest(ctx, persist, 20, nil); err != nil {
		t.Fatal(err)
	}
	prefix := p.in.cfg.Kafka.TopicPrefix
	for _, rec := range []struct{ stream, key, value string }{
		{"room", "!poison:local.test", "this is not a room record"},
		{"usersync", "sync1", `{"v":1}`},
	} {
		w := kafkaio.NewWriter(p.in.brokers, schema.Topic(prefix, rec.stream))
		err := w.WriteMessages(ctx, kafka.Message{Key: []byte(rec.key), Value: []byte(rec.value)})
		_ = w.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 60*time.Second, "remote0.test backing off", func() bool {
		var n int
		noQueryError(t, p.in.pool.QueryRow(ctx, "SELECT count(*) FROM sender_destinations WHERE destination = 'remote0.test' AND retry_interval_ms > 0").Scan(&n))
		return n == 1
	})
	// An operator paused remote2.test (known once it accepted something).
	testenv.Eventually(t, 60*time.Second, "remote2.test paused through the admin API", func() bool {
		req, err := http.NewRequest(http.MethodPost, "http://"+p.in.listeners["admin"]+"/_fedpipe/admin/v1/federation/destinations/remote2.test/pause", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer adm1n")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// chromium finds Debian's chromium, or skips the test saying how to get it.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	t.Skip("no chromium to open the status page with: apt-get install -y chromium (make test installs it)")
	return ""
}

// `fedpipe status` prints the failing destination, the dead letter and the
// stall of a running pipeline in the terminal; a person opening the status
// page on a phone sees the same, without scrolling sideways, and the page
// refreshes itself.
func TestStatusCommandAndPageInABrowser(t *testing.T) {
	p := statusPipeline(t)
	prefix := p.in.cfg.Kafka.TopicPrefix
	base := "http://" + p.in.listeners["admin"]
	// The stall shows once two samples a second apart have seen the partition
	// waiting: ask until everything is there.
	want := []string{"stages: relay,router,sender,ingest", prefix + "-router", "remote0.test", "backing off", "remote2.test", "paused", "DEAD LETTERS",
		"1 in " + prefix + ".deadletter", "STALLED", prefix + "-presence  " + prefix + ".usersync/"}
	var out string
	var missing []string
	testenv.Eventually(t, 60*time.Second, "fedpipe status to print the trouble", func() bool {
		var err error
		if out, err = run(t, "status", "--url", base, "--admin.token=adm1n"); err != nil {
			t.Fatalf("fedpipe status: %v\n%s", err, out)
		}
		missing = missing[:0]
		for _, w := range want {
			if !strings.Contains(out, w) {
				missing = append(missing, w)
			}
		}
		if len(missing) > 0 {
			t.Logf("fedpipe status does not print %q yet", missing)
			time.Sleep(500 * time.Millisecond)
		}
		return len(missing) == 0
	})
	t.Logf("fedpipe status:\n%s", out)
	if out, err := run(t, "status", "--url", base, "--admin.token=wrong"); err == nil || !strings.Contains(err.Error(), "M_UNKNOWN_TOKEN") {
		t.Errorf("fedpipe status with a wrong token: %v\n%s", err, out)
	}
	t.Run("browser", func(t *testing.T) { statusPageInABrowser(t, p) })
	t.Run("metrics", func(t *testing.T) { dashboardMetrics(t, p) })
}

func statusPageInABrowser(t *testing.T, p *pipeline) {
	exe := chromium(t)
	prefix := p.in.cfg.Kafka.TopicPrefix
	base := "http://" + p.in.listeners["admin"]

	// Chromium's helper processes may still write to their profile for a
	// moment after the browser is gone: the profile is removed with retries,
	// not by t.TempDir, whose cleanup fails the test on a busy machine.
	profile, err := os.MkdirTemp("", "fedpipe-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for os.RemoveAll(profile) != nil && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
	})
	opts := append(chromedp.DefaultExecAllocatorOptions[:0:0],
		chromedp.ExecPath(exe), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.UserDataDir(profile), chromedp.WindowSize(390, 844),
		// A loaded CI machine has taken more than the default 20 s to start chromium.
		chromedp.WSURLReadTimeout(90*time.Second))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	// This cdproto is older than Debian's chromium: events it cannot decode are
	// not the page's problem.
	quiet := func(format string, args ...any) {
		if msg := fmt.Sprintf(format, args...); !strings.Contains(msg, "could not unmarshal event") {
			t.Log(msg)
		}
	}
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithErrorf(quiet))
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(bctx, 90*time.Second)
	defer cancel()
	started := time.Now()
	if err := chromedp.Run(ctx, chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(3), chromedp.EmulateMobile)); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	t.Logf("chromium started in %s", time.Since(started).Round(time.Millisecond))

	want := []string{
		"fedpipe · test",
		"stages here: relay, router, sender, ingest",
		prefix + "-router", prefix + "-sender", prefix + "-presence",
		"remote0.test\tbacking off",
		"remote2.test\tpaused",
		"1 in " + prefix + ".deadletter",
		prefix + ".room 1;", // the dead letter's source
		prefix + "-presence\t" + prefix + ".usersync/",
	}
	var text string
	var missing []string
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := chromedp.Run(ctx, chromedp.Navigate(base+"/?access_token=adm1n"), chromedp.Evaluate(`document.body.innerText`, &text)); err != nil {
			t.Fatalf("opening the status page: %v", err)
		}
		missing = missing[:0]
		for _, w := range want {
			if !strings.Contains(text, w) {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	if len(missing) > 0 {
		t.Fatalf("the page does not show %q; it shows:\n%s", missing, text)
	}
	for _, bad := range []string{"Could not read", "No partition is stalled", "No dead letters", "Every destination is healthy"} {
		if strings.Contains(text, bad) {
			t.Errorf("the page says %q:\n%s", bad, text)
		}
	}
	var layout struct {
		ScrollWidth, InnerWidth float64
		Refresh                 string
	}
	if err := chromedp.Run(ctx, chromedp.Evaluate(`({ScrollWidth: document.documentElement.scrollWidth, InnerWidth: window.innerWidth,
		Refresh: document.querySelector('meta[http-equiv=refresh]').content})`, &layout)); err != nil {
		t.Fatal(err)
	}
	if layout.ScrollWidth > layout.InnerWidth {
		t.Errorf("on a 390 px wide phone the page is %v px wide: it scrolls sideways", layout.ScrollWidth)
	}
	// It refreshes itself: a mark left on the page is gone after the refresh.
	var marked bool
	if err := chromedp.Run(ctx, chromedp.Evaluate(`window.fedpipeMark = true`, &marked)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, "the page to refresh itself", func() bool {
		var still bool
		if err := chromedp.Run(ctx, chromedp.Evaluate(`window.fedpipeMark === true`, &still)); err != nil {
			return false
		}
		return !still
	})
	t.Logf("the page as a person sees it:\n%s", text)

}

// exports reports whether a member of p registered the metric name. A
// vector with no series yet is missing from a scrape, so the registries are
// asked: registering another collector under a name in use is refused.
func exports(p *pipeline, name string) bool {
	for _, reg := range p.regs {
		probe := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: "probe"})
		if err := reg.Register(probe); err != nil {
			return true
		}
		reg.Unregister(probe)
	}
	return false
}

// The Grafana dashboard and the alert rules name only metrics fedpipe
// exports: a renamed metric fails here instead of leaving an empty panel or
// an alert that can never fire.
func dashboardMetrics(t *testing.T, p *pipeline) {
	if exports(p, "fedpipe_no_such_metric") {
		t.Fatal("the probe finds a metric nobody registered")
	}
	ref := regexp.MustCompile(`fedpipe_[a-z0-9_]+`)
	for _, file := range []string{"../../deploy/grafana/fedpipe.json", "../../deploy/prometheus/alerts.yml"} {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		names := ref.FindAllString(string(raw), -1)
		for _, m := range names {
			ok := exports(p, m)
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if n, cut := strings.CutSuffix(m, suffix); cut && !ok {
					ok = exports(p, n)
				}
			}
			if !ok {
				t.Errorf("%s names %s, which fedpipe does not export", file, m)
			}
		}
		if len(names) < 5 {
			t.Errorf("%s names only %d metrics", file, len(names))
		}
	}
}
