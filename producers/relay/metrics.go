package relay

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the relay's: per stream (label `stream`, its relay_positions
// name) and per round.
type metrics struct {
	published    *prometheus.CounterVec
	position     *prometheus.GaugeVec
	duration     *prometheus.HistogramVec
	deadLettered *prometheus.CounterVec
	failures     prometheus.Counter
	waitingXID   prometheus.Histogram
	xidChecks    prometheus.Counter
}

func newMetrics() metrics {
	stream := []string{"stream"}
	return metrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedpipe_relay_records_published_total",
			Help: "Records the relay published, by stream (events: events and state deltas on the room topic)."}, stream),
		position: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fedpipe_relay_position", Help: "Stream position the relay has published up to, by stream."}, stream),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "fedpipe_relay_publish_duration_seconds",
			Help: "Time to read and publish one batch of a stream.", Buckets: prometheus.DefBuckets}, stream),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedpipe_relay_records_deadlettered_total",
			Help: "Records the relay could never publish (too large, or refused by a broker) and sent to the dead-letter topic, by stream."}, stream),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedpipe_relay_failures_total", Help: "Rounds that failed and were retried."}),
		waitingXID: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fedpipe_relay_visibility_wait_seconds",
			Help: "Time spent waiting for in-progress transactions before publishing up to a position.", Buckets: prometheus.DefBuckets}),
		xidChecks: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedpipe_relay_visibility_checks_total",
			Help: "Queries asking whether the transactions holding unpublished positions have ended."}),
	}
}

func (m metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.published, m.position, m.duration, m.deadLettered, m.failures, m.waitingXID, m.xidChecks}
}

// metered is a stream with its metrics.
type metered struct {
	stream
	records      prometheus.Counter
	position     prometheus.Gauge
	duration     prometheus.Observer
	deadLettered prometheus.Counter
}

// renamed is a stream whose metrics had names of their own before the
// stream label; the relay keeps those series too.
type renamed interface {
	formerMetrics() (prometheus.Counter, prometheus.Gauge)
}

// stream returns s with its metrics, and the collectors of its former metric
// names to register.
func (m metrics) stream(s stream) (metered, []prometheus.Collector) {
	name := s.name()
	p := metered{stream: s, records: m.published.WithLabelValues(name), position: m.position.WithLabelValues(name),
		duration: m.duration.WithLabelValues(name), deadLettered: m.deadLettered.WithLabelValues(name)}
	rn, ok := s.(renamed)
	if !ok {
		return p, nil
	}
	records, position := rn.formerMetrics()
	p.records, p.position = teeCounter{p.records, records}, teeGauge{p.position, position}
	return p, []prometheus.Collector{records, position}
}

// teeCounter adds to a second counter what it adds to its own.
type teeCounter struct {
	prometheus.Counter
	also prometheus.Counter
}

func (t teeCounter) Add(v float64) { t.Counter.Add(v); t.also.Add(v) }
func (t teeCounter) Inc()          { t.Add(1) }

// teeGauge sets a second gauge to what it sets its own. The relay calls Set
// only.
type teeGauge struct {
	prometheus.Gauge
	also prometheus.Gauge
}

func (t teeGauge) Set(v float64) { t.Gauge.Set(v); t.also.Set(v) }
