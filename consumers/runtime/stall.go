package runtime

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// stallWatch looks at the whole group, not only this member's partitions: a
// partition with records to consume whose committed offset has not moved for
// StallAfter is stalled, whoever owns it. That is what an operator needs to see
// when a member that no longer exists still holds partitions (its own lag gauge
// is never updated, since nobody runs that partition), or when a live member is
// stuck retrying one record.
type stallWatch struct {
	cfg     Config
	client  *kafka.Client
	log     *slog.Logger
	stalled *prometheus.GaugeVec
	track   stallTracker
}

func newStallWatch(cfg Config, logger *slog.Logger, stalled *prometheus.GaugeVec) *stallWatch {
	return &stallWatch{
		cfg:     cfg,
		client:  &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Timeout: 10 * time.Second},
		log:     logger,
		stalled: stalled,
		track:   stallTracker{after: cfg.StallAfter, parts: map[partKey]*partProgress{}},
	}
}

// Run checks the group every StallCheckInterval until ctx ends. A failed check
// is logged and retried at the next tick: watching must never stop the stage.
func (w *stallWatch) Run(ctx context.Context) error {
	t := time.NewTicker(w.cfg.StallCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := w.check(ctx); err != nil && ctx.Err() == nil {
			w.log.Debug("checking the group for stalled partitions", "err", err)
		}
	}
}

func (w *stallWatch) check(ctx context.Context) error {
	snap, err := w.snapshot(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	counts := map[string]int{}
	for _, topic := range w.cfg.Topics {
		counts[topic] = 0
	}
	for k, p := range snap.parts {
		ev := w.track.observe(now, k, p.committed, p.lag)
		if ev.stalled {
			counts[k.topic]++
		}
		switch {
		case ev.warn:
			w.log.Warn("consumer group partition stalled: records waiting and no progress",
				"topic", k.topic, "partition", k.partition, "lag", p.lag, "committed", p.committed,
				"stalled_for", ev.stalledFor.Round(time.Second), "owner", snap.owner(k))
		case ev.recovered:
			w.log.Info("consumer group partition moving again", "topic", k.topic, "partition", k.partition,
				"stalled_for", ev.stalledFor.Round(time.Second))
		}
	}
	for topic, n := range counts {
		w.stalled.WithLabelValues(topic).Set(float64(n))
	}
	return nil
}

type partKey struct {
	topic     string
	partition int
}

type partState struct {
	committed, lag int64
}

type groupSnapshot struct {
	parts  map[partKey]partState
	owners map[partKey]string
}

func (s groupSnapshot) owner(k partKey) string {
	if o, ok := s.owners[k]; ok {
		return o
	}
	return "none"
}

// snapshot reads, for every partition of the group's topics, the committed
// offset, the lag (high watermark minus committed, or minus the log start when
// nothing is committed) and the member that owns it.
func (w *stallWatch) snapshot(ctx context.Context) (groupSnapshot, error) {
	meta, err := w.client.Metadata(ctx, &kafka.MetadataRequest{Topics: w.cfg.Topics})
	if err != nil {
		return groupSnapshot{}, fmt.Errorf("reading metadata: %w", err)
	}
	offsetReqs := map[string][]kafka.OffsetRequest{}
	fetchReqs := map[string][]int{}
	for _, t := range meta.Topics {
		if t.Error != nil {
			return groupSnapshot{}, fmt.Errorf("reading metadata of %s: %w", t.Name, t.Error)
		}
		for _, p := range t.Partitions {
			offsetReqs[t.Name] = append(offsetReqs[t.Name], kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
			fetchReqs[t.Name] = append(fetchReqs[t.Name], p.ID)
		}
	}
	offs, err := w.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: offsetReqs})
	if err != nil {
		return groupSnapshot{}, fmt.Errorf("listing offsets: %w", err)
	}
	commits, err := w.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: w.cfg.GroupID, Topics: fetchReqs})
	if err != nil {
		return groupSnapshot{}, fmt.Errorf("fetching committed offsets: %w", err)
	}
	committed := map[partKey]int64{}
	for topic, parts := range commits.Topics {
		for _, p := range parts {
			if p.Error == nil {
				committed[partKey{topic, p.Partition}] = p.CommittedOffset
			}
		}
	}
	snap := groupSnapshot{parts: map[partKey]partState{}, owners: w.owners(ctx)}
	for topic, parts := range offs.Topics {
		for _, p := range parts {
			if p.Error != nil {
				continue
			}
			k := partKey{topic, p.Partition}
			c, ok := committed[k]
			start := c
			if !ok || c < 0 {
				start = p.FirstOffset
			}
			snap.parts[k] = partState{committed: c, lag: max(p.LastOffset-start, 0)}
		}
	}
	return snap, nil
}

// owners names the member holding each partition ("member-id@host"); an empty
// map when the group cannot be described (the stall is reported anyway).
func (w *stallWatch) owners(ctx context.Context) map[partKey]string {
	out := map[partKey]string{}
	resp, err := w.client.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{w.cfg.GroupID}})
	if err != nil || len(resp.Groups) == 0 {
		return out
	}
	for _, m := range resp.Groups[0].Members {
		for _, t := range m.MemberAssignments.Topics {
			for _, p := range t.Partitions {
				out[partKey{t.Topic, p}] = m.MemberID + "@" + m.ClientHost
			}
		}
	}
	return out
}

// stallTracker is the pure rule: a partition is stalled once it has had records
// waiting (lag > 0) with the same committed offset for at least after, counted
// from the first check that saw it waiting at that offset. It warns when a
// partition becomes stalled and again every further after while it stays so.
type stallTracker struct {
	after time.Duration
	parts map[partKey]*partProgress
}

type partProgress struct {
	committed int64
	waiting   time.Time // first seen with records waiting at this offset; zero when caught up
	warnedAt  time.Time
	stalled   bool
}

type stallEvent struct {
	stalled, warn, recovered bool
	stalledFor               time.Duration // how long it waited: while stalled, and on recovery
}

func (t *stallTracker) observe(now time.Time, k partKey, committed, lag int64) stallEvent {
	p, ok := t.parts[k]
	if !ok {
		p = &partProgress{committed: committed}
		t.parts[k] = p
	}
	if committed != p.committed || lag == 0 {
		var ev stallEvent
		if p.stalled {
			ev = stallEvent{recovered: true, stalledFor: now.Sub(p.waiting)}
		}
		*p = partProgress{committed: committed}
		if lag > 0 {
			p.waiting = now
		}
		return ev
	}
	if p.waiting.IsZero() {
		p.waiting = now
	}
	waited := now.Sub(p.waiting)
	if waited < t.after {
		return stallEvent{}
	}
	ev := stallEvent{stalled: true, stalledFor: waited}
	if !p.stalled || now.Sub(p.warnedAt) >= t.after {
		ev.warn = true
		p.warnedAt = now
	}
	p.stalled = true
	return ev
}
