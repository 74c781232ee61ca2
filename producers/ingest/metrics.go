package ingest

import (
	"context"
	"fmt"
	"time"

	"github.com/go-kit/kit/endpoint"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the ingest API's Prometheus collectors.
type metrics struct {
	requests    *prometheus.CounterVec
	events      prometheus.Counter
	duration    prometheus.Histogram
	usersync    prometheus.Counter
	toDevice    prometheus.Counter
	typing      prometheus.Counter
	deviceLists prometheus.Counter
	receipts    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fedpipe_ingest_requests_total",
			Help: "Ingest requests answered, by HTTP status code.",
		}, []string{"code"}),
		events: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedpipe_ingest_events_total",
			Help: "Events persisted through the ingest API.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fedpipe_ingest_persist_duration_seconds",
			Help:    "Time to persist one ingest request's events, successful or not.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		usersync: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedpipe_ingest_usersync_records_total",
			Help: "Presence input records written to the usersync topic through the ingest API.",
		}),
		toDevice: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedpipe_ingest_to_device_edus_total",
			Help: "To-device EDUs stored through the ingest API (one per destination and up-to-64-KiB part of a message).",
		}),
		typing: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedpipe_ingest_typing_records_total",
			Help: "Typing records written to the typing topic through the ingest API.",
		}),
		deviceLists: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedpipe_ingest_device_list_updates_total",
			Help: "Device and signing key updates stored through the ingest API.",
		}),
		receipts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fedpipe_ingest_receipts_total",
			Help: "m.read receipts stored through the ingest API (private ones are not stored).",
		}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.events, m.duration, m.usersync, m.toDevice, m.typing, m.deviceLists, m.receipts} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering ingest metrics: %w", err)
		}
	}
	return m, nil
}

// instrument counts persisted events and times the endpoint.
func instrument(m *metrics) endpoint.Middleware {
	return func(next endpoint.Endpoint) endpoint.Endpoint {
		return func(ctx context.Context, request any) (any, error) {
			start := time.Now()
			resp, err := next(ctx, request)
			m.duration.Observe(time.Since(start).Seconds())
			if err == nil {
				m.events.Add(float64(len(request.(persistRequest).events)))
				m.requests.WithLabelValues("200").Inc()
			}
			return resp, err
		}
	}
}
