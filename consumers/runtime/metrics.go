package runtime

import "github.com/prometheus/client_golang/prometheus"

// Registerer is where metrics are registered (a prometheus.Registerer).
type Registerer = prometheus.Registerer

// metrics are one group's: each series carries the label group through
// prometheus.WrapRegistererWith, so the vectors here only take the labels that
// vary within the group.
type metrics struct {
	handled, poison, handleErrors *prometheus.CounterVec // by topic
	// commitFailures and rebalances take no label values: vectors rather than
	// counters so that, as before the group label moved into the registerer,
	// a series appears only once it is first counted.
	commitFailures, rebalances *prometheus.CounterVec
	lag                        *prometheus.GaugeVec     // by topic and partition
	stalled                    *prometheus.GaugeVec     // by topic
	age                        *prometheus.HistogramVec // by topic
}

// newMetrics registers group's metrics with reg, reusing them when a second
// member of the same group in the same process registers them again.
func newMetrics(reg Registerer, group string) (*metrics, error) {
	reg = prometheus.WrapRegistererWith(prometheus.Labels{"group": group}, reg)
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	}
	m := &metrics{
		handled:        counter("fedpipe_consumer_records_handled_total", "Records handled, by group and topic.", "topic"),
		poison:         counter("fedpipe_consumer_records_deadlettered_total", "Records sent to the dead-letter topic.", "topic"),
		handleErrors:   counter("fedpipe_consumer_handle_errors_total", "Transient handling failures (retried).", "topic"),
		commitFailures: counter("fedpipe_consumer_commit_failures_total", "Offset commits that failed."),
		rebalances:     counter("fedpipe_consumer_generations_total", "Group generations this member joined."),
		lag:            gauge("fedpipe_consumer_lag_records", "High watermark minus committed offset.", "topic", "partition"),
		stalled: gauge("fedpipe_consumer_stalled_partitions",
			"Partitions of the group (whoever owns them) with records waiting and no committed progress for the stall threshold.", "topic"),
	}
	m.age = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "fedpipe_consumer_record_age_seconds",
		Help:    "Time from a record's timestamp (when its producer wrote it) to its fetch by this member: the latency up to this stage, or how far behind a replay is.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 17)}, []string{"topic"})
	var err error
	if m.age, err = register(reg, m.age); err != nil {
		return nil, err
	}
	for _, c := range []**prometheus.CounterVec{&m.handled, &m.poison, &m.handleErrors, &m.commitFailures, &m.rebalances} {
		if *c, err = register(reg, *c); err != nil {
			return nil, err
		}
	}
	for _, g := range []**prometheus.GaugeVec{&m.lag, &m.stalled} {
		if *g, err = register(reg, *g); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// register registers c with reg, or returns the collector registered before it.
func register[C prometheus.Collector](reg Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		are, ok := err.(prometheus.AlreadyRegisteredError)
		if !ok {
			return c, err
		}
		existing, ok := are.ExistingCollector.(C)
		if !ok {
			return c, err
		}
		return existing, nil
	}
	return c, nil
}
