package ingest_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/producers/ingest"
)

// BenchmarkIngest measures POSTing batches of 100 member events with a state
// delta each over loopback HTTP.
func BenchmarkIngest(b *testing.B) {
	s := start(b, ingest.Config{})
	const batchSize = 100
	n := 0
	for b.Loop() {
		parts := make([]string, batchSize)
		for i := range parts {
			parts[i] = memberEvent(n)
			n++
		}
		resp, err := http.Post(s.url, "application/json", strings.NewReader(`{"events":[`+strings.Join(parts, ",")+`]}`))
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
}
