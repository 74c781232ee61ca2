package queue

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	txns                              *prometheus.CounterVec
	pdusSent, pduRejected             prometheus.Counter
	edusSent                          *prometheus.CounterVec
	pdusToCatchUp, backoffs           prometheus.Counter
	edusDropped                       *prometheus.CounterVec
	presenceSuperseded                prometheus.Counter
	catchUps                          prometheus.Counter
	destinations, active              prometheus.Gauge
	sendSeconds                       prometheus.Histogram
	dropped                           *prometheus.CounterVec
	retries, storeErrors, catchUpSent prometheus.Counter
	fenceWaits, fenceLost, overflows  prometheus.Counter
	durableAcked                      *prometheus.CounterVec
	replayed                          prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m := &metrics{
		txns:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedpipe_sender_transactions_total", Help: "Transactions sent, by result (ok, failed, fatal)."}, []string{"result"}),
		pdusSent: c("fedpipe_sender_pdus_sent_total", "PDUs delivered in accepted transactions."),
		edusSent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedpipe_sender_edus_sent_total",
			Help: "EDUs delivered in accepted transactions, by EDU type."}, []string{"edu_type"}),
		pduRejected:   c("fedpipe_sender_pdus_rejected_total", "PDUs a destination answered with a per-PDU error."),
		pdusToCatchUp: c("fedpipe_sender_pdus_deferred_total", "PDUs recorded for catch-up instead of sent (destination backing off)."),
		edusDropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedpipe_sender_edus_dropped_total",
			Help: "EDUs dropped because their destination was backing off or catching up, by EDU type (m.presence counts one per user state)."}, []string{"edu_type"}),
		presenceSuperseded: c("fedpipe_sender_presence_superseded_total", "Presence states replaced, unsent, by a later state of the same user for the same destination (only the latest is sent)."),
		backoffs:           c("fedpipe_sender_backoffs_total", "Times a destination started or extended a backoff."),
		catchUps:           c("fedpipe_sender_catchups_total", "Catch-up runs started."),
		destinations:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "fedpipe_sender_destinations", Help: "Destinations with a queue on this member."}),
		active:             prometheus.NewGauge(prometheus.GaugeOpts{Name: "fedpipe_sender_active_destinations", Help: "Destinations with a transaction being sent."}),
		sendSeconds:        prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fedpipe_sender_transaction_duration_seconds", Help: "Time to send one transaction, retries included.", Buckets: prometheus.DefBuckets}),
	}
	m.dropped = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedpipe_sender_dropped_total",
		Help: "PDUs and EDUs dropped as unsendable (too large, not canonical JSON) or because the destination called their transaction malformed (fatal)."}, []string{"kind", "reason"})
	m.retries = c("fedpipe_sender_transaction_retries_total", "Transactions sent again with the same id after a transient failure.")
	m.catchUpSent = c("fedpipe_sender_catchup_pdus_sent_total", "Catch-up PDUs (the latest missed event of a room) accepted by their destination.")
	m.storeErrors = c("fedpipe_sender_store_errors_total", "Failed store writes of backoff or catch-up state (retried).")
	m.fenceWaits = c("fedpipe_sender_fence_waits_total", "Times a destination's worker could not take the destination's fence (another member held it, or the store was down) and waited.")
	m.fenceLost = c("fedpipe_sender_fence_lost_total", "Times a destination's worker lost its fence while it held it (the connection holding it broke); its send was cancelled.")
	m.overflows = c("fedpipe_sender_queue_overflows_total", "Times a destination's queue passed its bound (Config.MaxPending items, or a PDU older than Config.MaxPendingAge) and the destination went to catch-up instead.")
	m.replayed = c("fedpipe_sender_pdus_replayed_total", "PDUs not sent again because their destination had accepted, or was already to get, an event of their room at or after their position: replayed records (a replay of the room or outbound topic, or what a crash left uncommitted).")
	m.durableAcked = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedpipe_sender_stored_edus_delivered_total",
		Help: "Stored EDUs (kind to_device or device_lists) a destination accepted (or refused as malformed, counted in fedpipe_sender_dropped_total too) and deleted from the store."}, []string{"kind"})
	for _, col := range []prometheus.Collector{m.durableAcked, m.replayed, m.overflows, m.fenceWaits, m.fenceLost, m.dropped, m.retries, m.storeErrors, m.catchUpSent, m.txns, m.pdusSent, m.edusSent, m.pduRejected, m.pdusToCatchUp, m.edusDropped, m.presenceSuperseded, m.backoffs, m.catchUps, m.destinations, m.active, m.sendSeconds} {
		if err := reg.Register(col); err != nil {
			return nil, err
		}
	}
	return m, nil
}
