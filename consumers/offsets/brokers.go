package offsets

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
)

// rows reads the committed offset, log start and high watermark of each partition.
func (t *Tool) rows(ctx context.Context, group string, parts []partKey) ([]Row, error) {
	listReq := map[string][]kafka.OffsetRequest{}
	fetchReq := map[string][]int{}
	for _, p := range parts {
		listReq[p.topic] = append(listReq[p.topic], kafka.FirstOffsetOf(p.partition), kafka.LastOffsetOf(p.partition))
		fetchReq[p.topic] = append(fetchReq[p.topic], p.partition)
	}
	ends, err := t.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: listReq})
	if err != nil {
		return nil, fmt.Errorf("listing offsets: %w", err)
	}
	var committed *kafka.OffsetFetchResponse
	err = whileCoordinatorMoves(ctx, func() error {
		committed, err = t.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: fetchReq})
		if err == nil && committed.Error != nil && !errors.Is(committed.Error, kafka.GroupIdNotFound) { // a group that never committed
			err = committed.Error
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("fetching the offsets of group %s: %w", group, err)
	}
	rows := make(map[partKey]*Row, len(parts))
	for _, p := range parts {
		rows[p] = &Row{Topic: p.topic, Partition: p.partition, Current: -1, New: -1}
	}
	for topic, ps := range ends.Topics {
		for _, p := range ps {
			if p.Error != nil {
				return nil, fmt.Errorf("listing offsets of %s/%d: %w", topic, p.Partition, p.Error)
			}
			if r := rows[partKey{topic, p.Partition}]; r != nil {
				r.Start, r.End = p.FirstOffset, p.LastOffset
			}
		}
	}
	for topic, ps := range committed.Topics {
		for _, p := range ps {
			if p.Error != nil {
				return nil, fmt.Errorf("fetching the offset of %s/%d: %w", topic, p.Partition, p.Error)
			}
			if r := rows[partKey{topic, p.Partition}]; r != nil {
				r.Current = p.CommittedOffset
			}
		}
	}
	out := make([]Row, len(parts))
	for i, p := range parts {
		out[i] = *rows[p]
	}
	return out, nil
}

// offsetsAt returns each partition's offset of its first record stamped at or
// after ts, or -1 where there is none.
func (t *Tool) offsetsAt(ctx context.Context, parts []partKey, ts time.Time) (map[partKey]int64, error) {
	req := map[string][]kafka.OffsetRequest{}
	for _, p := range parts {
		req[p.topic] = append(req[p.topic], kafka.TimeOffsetOf(p.partition, ts))
	}
	resp, err := t.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: req})
	if err != nil {
		return nil, fmt.Errorf("listing offsets at %s: %w", ts.Format(time.RFC3339Nano), err)
	}
	out := map[partKey]int64{}
	for topic, ps := range resp.Topics {
		for _, p := range ps {
			if p.Error != nil {
				return nil, fmt.Errorf("listing offsets of %s/%d at %s: %w", topic, p.Partition, ts.Format(time.RFC3339Nano), p.Error)
			}
			off := int64(-1) // Offsets maps the offset found to its record's time
			for o := range p.Offsets {
				if o >= 0 {
					off = o
				}
			}
			out[partKey{topic, p.Partition}] = off
		}
	}
	return out, nil
}

type groupDescription struct {
	state   string
	members []Member
	owners  map[partKey]string
}

// describe reads the group's state, members and assignments.
func (t *Tool) describe(ctx context.Context, group string) (groupDescription, error) {
	var resp *kafka.DescribeGroupsResponse
	err := whileCoordinatorMoves(ctx, func() (err error) {
		resp, err = t.client.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
		if err == nil && len(resp.Groups) > 0 && resp.Groups[0].Error != nil {
			err = resp.Groups[0].Error
		}
		return err
	})
	if err != nil {
		return groupDescription{}, fmt.Errorf("describing group %s: %w", group, err)
	}
	d := groupDescription{owners: map[partKey]string{}}
	if len(resp.Groups) == 0 {
		return d, nil
	}
	g := resp.Groups[0]
	d.state = g.GroupState
	for _, m := range g.Members {
		d.members = append(d.members, Member{ID: m.MemberID, ClientID: m.ClientID, Host: m.ClientHost})
		for _, at := range m.MemberAssignments.Topics {
			for _, p := range at.Partitions {
				d.owners[partKey{at.Topic, p}] = m.MemberID
			}
		}
	}
	return d, nil
}

// whileCoordinatorMoves runs call again, for up to 15 s, while it fails with an
// error Kafka calls temporary: a group's coordinator that is loading, moving or
// not yet elected (a fresh broker creating its offsets topic answers
// NOT_COORDINATOR for a while).
func whileCoordinatorMoves(ctx context.Context, call func() error) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := call()
		var kerr kafka.Error
		if err == nil || !errors.As(err, &kerr) || !kerr.Temporary() || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}
