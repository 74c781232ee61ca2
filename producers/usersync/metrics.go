package usersync

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are a Publisher's Prometheus collectors, registered only when a
// registerer is given.
type metrics struct {
	records       *prometheus.CounterVec
	failures      *prometheus.CounterVec
	aliveFailures prometheus.Counter
	duration      prometheus.Histogram
	syncing       prometheus.Gauge
	activeSkipped prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedpipe_usersync_records_total",
			Help: "Presence input records the broker acknowledged, by kind.",
		}, []string{"kind"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedpipe_usersync_write_failures_total",
			Help: "Failed writes of presence input, by the kind of their first record.",
		}, []string{"kind"}),
		aliveFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedpipe_usersync_alive_failures_total",
			Help: "Keep-alive rounds that failed.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fedpipe_usersync_write_duration_seconds",
			Help:    "Time to write presence input until the broker acknowledged it, successful or not.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		syncing: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fedpipe_usersync_syncing_users",
			Help: "Users with at least one sync under way on this instance.",
		}),
		activeSkipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedpipe_usersync_active_skipped_total",
			Help: "UserActive calls not written: the user's last user_active is younger than ActiveInterval.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.records, m.failures, m.aliveFailures, m.duration, m.syncing, m.activeSkipped} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering usersync metrics: %w", err)
		}
	}
	return m, nil
}
