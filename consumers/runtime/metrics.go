package runtime

import "github.com/prometheus/client_golang/prometheus"

// Registerer is where metrics are registered (a prometheus.Registerer).
type Registerer = prometheus.Registerer

type metrics struct {
	handled, poison, handleErrors *prometheus.CounterVec
	commitFailures, rebalances    *prometheus.CounterVec
	lag, stalled                  *prometheus.GaugeVec
	batchWrites                   prometheus.Counter
}

// newMetrics registers the runtime's metrics, reusing them when a second group
// in the same process registers the same names.
func newMetrics(reg Registerer) (*metrics, error) {
	m := &metrics{
		handled:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedpipe_consumer_records_handled_total", Help: "Records handled, by group and topic."}, []string{"group", "topic"}),
		poison:         prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedpipe_consumer_records_deadlettered_total", Help: "Records sent to the dead-letter topic."}, []string{"group", "topic"}),
		handleErrors:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedpipe_consumer_handle_errors_total", Help: "Transient handling failures (retried)."}, []string{"group", "topic"}),
		commitFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedpipe_consumer_commit_failures_total", Help: "Offset commits that failed."}, []string{"group"}),
		rebalances:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedpipe_consumer_generations_total", Help: "Group generations this member joined."}, []string{"group"}),
		lag:            prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fedpipe_consumer_lag_records", Help: "High watermark minus committed offset."}, []string{"group", "topic", "partition"}),
		stalled: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fedpipe_consumer_stalled_partitions",
			Help: "Partitions of the group (whoever owns them) with records waiting and no committed progress for the stall threshold."}, []string{"group", "topic"}),
	}
	for _, c := range []**prometheus.CounterVec{&m.handled, &m.poison, &m.handleErrors, &m.commitFailures, &m.rebalances} {
		if err := reg.Register(*c); err != nil {
			are, ok := err.(prometheus.AlreadyRegisteredError)
			if !ok {
				return nil, err
			}
			*c = are.ExistingCollector.(*prometheus.CounterVec)
		}
	}
	for _, g := range []**prometheus.GaugeVec{&m.lag, &m.stalled} {
		if err := reg.Register(*g); err != nil {
			are, ok := err.(prometheus.AlreadyRegisteredError)
			if !ok {
				return nil, err
			}
			*g = are.ExistingCollector.(*prometheus.GaugeVec)
		}
	}
	return m, nil
}
