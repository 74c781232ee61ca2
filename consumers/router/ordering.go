package router

import (
	"context"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
)

// roomBarrier orders presence after membership. The presence and room topics
// are consumed independently, so a presence change written right after a kick
// could be routed before the kick is applied and reach the kicked server. The
// relay publishes every room record below a stream position before the
// presence records at that position, so once a presence record has been
// fetched, every room record it must be judged against is already below the
// room partitions' ends. wait reads those ends and returns once the router's
// group has committed past them: committed means handled, and a handled
// membership delta is stored in PostgreSQL, where presence destinations are read.
type roomBarrier struct {
	client *kafka.Client
	group  string
	topic  string
	poll   time.Duration
}

// wait blocks until the group has handled every record the room topic holds
// now, or ctx ends.
func (b *roomBarrier) wait(ctx context.Context) error {
	ends, err := b.ends(ctx)
	if err != nil {
		return err
	}
	for {
		behind, err := b.behind(ctx, ends)
		if err != nil {
			return err
		}
		if behind == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(b.poll):
		}
	}
}

// partitionEnd is a partition's log start and high watermark.
type partitionEnd struct{ start, end int64 }

func (b *roomBarrier) ends(ctx context.Context) (map[int]partitionEnd, error) {
	meta, err := b.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{b.topic}})
	if err != nil {
		return nil, fmt.Errorf("reading the partitions of %s: %w", b.topic, err)
	}
	var reqs []kafka.OffsetRequest
	for _, t := range meta.Topics {
		if t.Error != nil {
			return nil, fmt.Errorf("reading the partitions of %s: %w", b.topic, t.Error)
		}
		for _, p := range t.Partitions {
			reqs = append(reqs, kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
		}
	}
	resp, err := b.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{b.topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("listing the ends of %s: %w", b.topic, err)
	}
	out := map[int]partitionEnd{}
	for _, p := range resp.Topics[b.topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("listing the end of %s/%d: %w", b.topic, p.Partition, p.Error)
		}
		out[p.Partition] = partitionEnd{p.FirstOffset, p.LastOffset}
	}
	return out, nil
}

// behind counts the partitions whose committed offset is short of their end.
func (b *roomBarrier) behind(ctx context.Context, ends map[int]partitionEnd) (int, error) {
	parts := make([]int, 0, len(ends))
	for p := range ends {
		parts = append(parts, p)
	}
	resp, err := b.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: b.group, Topics: map[string][]int{b.topic: parts}})
	if err != nil {
		return 0, fmt.Errorf("fetching the offsets of %s on %s: %w", b.group, b.topic, err)
	}
	committed := map[int]int64{}
	for _, p := range resp.Topics[b.topic] {
		if p.Error == nil {
			committed[p.Partition] = p.CommittedOffset
		}
	}
	n := 0
	for p, e := range ends {
		c, ok := committed[p]
		if e.end > e.start && (!ok || c < e.end) {
			n++
		}
	}
	return n, nil
}
