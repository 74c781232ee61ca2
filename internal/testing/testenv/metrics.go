package testenv

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Value reads an unlabelled counter or gauge from reg. A metric that is not
// there fails the test: a renamed metric must not read as 0 and pass.
func Value(t testing.TB, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		if len(mf.GetMetric()) != 1 {
			t.Fatalf("metric %s has %d series, want one", name, len(mf.GetMetric()))
		}
		m := mf.GetMetric()[0]
		if m.GetCounter() != nil {
			return m.GetCounter().GetValue()
		}
		return m.GetGauge().GetValue()
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// Registered reports whether reg holds a metric named name, with series or
// without. A vector that was never incremented has no series, and Gather
// leaves it out, so it asks the registry: it refuses a probe collector whose
// name is taken (whatever its labels and help) and accepts it otherwise, and
// an accepted probe is unregistered at once.
func Registered(reg prometheus.Registerer, name string) bool {
	probe := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: "a test's probe for a registered name"})
	if err := reg.Register(probe); err != nil {
		return true
	}
	reg.Unregister(probe)
	return false
}
