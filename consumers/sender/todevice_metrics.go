package sender

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// toDeviceBacklog reports, at scrape time, the to-device EDUs the sender
// keeps for destinations that have not accepted them yet, across every
// member (the table is shared): how many, and the age of the oldest.
type toDeviceBacklog struct {
	pool   *pgxpool.Pool
	queued *prometheus.Desc
	oldest *prometheus.Desc
}

func newToDeviceBacklog(pool *pgxpool.Pool) *toDeviceBacklog {
	return &toDeviceBacklog{pool: pool,
		queued: prometheus.NewDesc("fedpipe_sender_to_device_queued", "To-device EDUs stored for destinations that have not accepted them yet (all members).", nil, nil),
		oldest: prometheus.NewDesc("fedpipe_sender_to_device_oldest_age_seconds", "Age of the oldest to-device EDU not yet accepted by its destination (0 when none; all members).", nil, nil),
	}
}

func (c *toDeviceBacklog) Describe(ch chan<- *prometheus.Desc) { ch <- c.queued; ch <- c.oldest }

func (c *toDeviceBacklog) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var n int64
	var age float64
	err := c.pool.QueryRow(ctx, `SELECT count(*), COALESCE(extract(epoch FROM now() - min(stored_at)), 0)::float8 FROM sender_to_device`).Scan(&n, &age)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.queued, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age)
}
