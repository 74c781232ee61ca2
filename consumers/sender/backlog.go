package sender

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// storedBacklog reports, at scrape time, the EDUs the sender keeps for
// destinations that have not accepted them yet, by kind (to_device,
// device_lists), across every member (the tables are shared): how many, and
// the age of the oldest.
type storedBacklog struct {
	pool   *pgxpool.Pool
	queued *prometheus.Desc
	oldest *prometheus.Desc
}

func newStoredBacklog(pool *pgxpool.Pool) *storedBacklog {
	return &storedBacklog{pool: pool,
		queued: prometheus.NewDesc("fedpipe_sender_stored_edus_queued", "Stored EDUs (to_device, device_lists) not yet accepted by their destination (all members; device lists: every update kept, superseded ones included).", []string{"kind"}, nil),
		oldest: prometheus.NewDesc("fedpipe_sender_stored_edus_oldest_age_seconds", "Age of the oldest stored EDU not yet accepted by its destination (0 when none; all members).", []string{"kind"}, nil),
	}
}

func (c *storedBacklog) Describe(ch chan<- *prometheus.Desc) { ch <- c.queued; ch <- c.oldest }

func (c *storedBacklog) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for kind, table := range map[string]string{"to_device": "sender_to_device", "device_lists": "sender_device_lists"} {
		var n int64
		var age float64
		err := c.pool.QueryRow(ctx, `SELECT count(*), COALESCE(extract(epoch FROM now() - min(stored_at)), 0)::float8 FROM `+table).Scan(&n, &age)
		if err != nil {
			ch <- prometheus.NewInvalidMetric(c.queued, err)
			return
		}
		ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(n), kind)
		ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age, kind)
	}
}
