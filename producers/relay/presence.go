package relay

import (
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fedpipe/fedpipe/schema"
)

// WithPresence makes the relay publish presence_stream to <prefix>.presence
// through w (keyed by user_id), in the same rounds as the events and after
// them (see Relay).
func WithPresence(w Writer) Option {
	return func(r *Relay) { r.added = append(r.added, presenceStream{presenceTable(w)}) }
}

// presenceTable is presence_stream, which the presence stage writes. It holds
// one row per user (a newer state replaces one not yet published), so a batch
// never holds two records of one user.
func presenceTable(w Writer) tableStream {
	return tableStream{
		stream: "presence", table: "presence_stream", position: "stream_id",
		columns: "stream_id, user_id, state, status_msg, last_active_ts, currently_active",
		kind:    schema.KindPresence, topic: "presence", w: w,
		scan: func(rows pgx.Rows) (int64, []byte, []byte, error) {
			rec := schema.PresenceRecord{V: schema.SchemaVersion, Kind: schema.KindPresence}
			if err := rows.Scan(&rec.Position, &rec.UserID, &rec.Presence, &rec.StatusMsg, &rec.LastActiveTS, &rec.CurrentlyActive); err != nil {
				return 0, nil, nil, err
			}
			v, err := rec.Marshal()
			if err != nil {
				return 0, nil, nil, fmt.Errorf("encoding presence of %s: %w", rec.UserID, err)
			}
			return rec.Position, []byte(rec.UserID), v, nil
		},
	}
}

// presenceStream is the presence table with the metric names it had before
// the relay's metrics took a stream label.
type presenceStream struct{ tableStream }

func (presenceStream) formerMetrics() (prometheus.Counter, prometheus.Gauge) {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: "fedpipe_relay_presence_published_total",
			Help: `Presence records the relay published (deprecated: fedpipe_relay_records_published_total{stream="presence"}).`}),
		prometheus.NewGauge(prometheus.GaugeOpts{Name: "fedpipe_relay_presence_position",
			Help: `Stream position the relay has published presence up to (deprecated: fedpipe_relay_position{stream="presence"}).`})
}
