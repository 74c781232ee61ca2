package admin

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
)

// GroupStatus is a consumer group as the brokers see it, whoever runs it.
type GroupStatus struct {
	ID         string            `json:"id"`
	State      string            `json:"state"` // Stable, PreparingRebalance, Empty, Dead...
	Members    []MemberStatus    `json:"members"`
	Partitions []PartitionStatus `json:"partitions"`
	Lag        int64             `json:"lag"`
	Stalled    int               `json:"stalled"`
	Error      string            `json:"error,omitempty"`
}

// MemberStatus is a member of a group.
type MemberStatus struct {
	ID         string `json:"id"`
	ClientID   string `json:"client_id"`
	Host       string `json:"host"`
	Partitions int    `json:"partitions"`
}

// PartitionStatus is one partition of a group's topics. Committed is -1 when
// the group has committed nothing there.
type PartitionStatus struct {
	Topic     string `json:"topic"`
	Partition int    `json:"partition"`
	Start     int64  `json:"start"`
	End       int64  `json:"end"`
	Committed int64  `json:"committed"`
	Lag       int64  `json:"lag"`
	Owner     string `json:"owner"`
	// State: "caught up" (nothing waiting), "moving" (committed since the
	// previous sample), "waiting" (records waiting, not yet judged stalled),
	// "stalled" (waiting with no progress for kafka.stall_after).
	State      string        `json:"state"`
	StalledFor time.Duration `json:"stalled_for_ns,omitempty"`
}

// groups samples every configured group; a group that cannot be read is
// returned with its Error set, the others still shown.
func (s *Server) groups(ctx context.Context) ([]GroupStatus, error) {
	out := make([]GroupStatus, 0, len(s.cfg.Groups))
	var errs []error
	for _, g := range s.cfg.Groups {
		st, err := s.readGroup(ctx, g)
		if err != nil {
			st = GroupStatus{ID: g.ID, Error: err.Error()}
			errs = append(errs, err)
		}
		out = append(out, st)
	}
	return out, errors.Join(errs...)
}

// readGroup reads a group's members from the group coordinator and each of its
// partitions' offsets, and judges each partition's progress.
func (s *Server) readGroup(ctx context.Context, g Group) (GroupStatus, error) {
	st := GroupStatus{ID: g.ID, Members: []MemberStatus{}, Partitions: []PartitionStatus{}}
	owners, err := s.readMembers(ctx, &st)
	if err != nil {
		return st, err
	}
	ends, committed, err := s.readOffsets(ctx, g)
	if err != nil {
		return st, err
	}
	now := time.Now()
	for topic, ps := range ends.Topics {
		for _, p := range ps {
			k := partitionKey(topic, p.Partition)
			c, ok := committed[k]
			if !ok {
				c = -1
			}
			ps := s.partitionStatus(now, g.ID, topic, p, c, owners[k])
			if ps.State == "stalled" {
				st.Stalled++
			}
			st.Lag += ps.Lag
			st.Partitions = append(st.Partitions, ps)
		}
	}
	slices.SortFunc(st.Partitions, func(a, b PartitionStatus) int {
		if c := strings.Compare(a.Topic, b.Topic); c != 0 {
			return c
		}
		return a.Partition - b.Partition
	})
	return st, nil
}

// partitionKey keys a partition in the maps of owners and committed offsets.
func partitionKey(topic string, partition int) [2]string {
	return [2]string{topic, fmt.Sprint(partition)}
}

// readMembers fills st's state and members from the group's description and
// returns which member owns each partition.
func (s *Server) readMembers(ctx context.Context, st *GroupStatus) (owners map[[2]string]string, err error) {
	desc, err := s.client.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{st.ID}})
	if err != nil {
		return nil, fmt.Errorf("describing group %s: %w", st.ID, err)
	}
	owners = map[[2]string]string{}
	if len(desc.Groups) == 0 {
		return owners, nil
	}
	dg := desc.Groups[0]
	if dg.Error != nil {
		return nil, fmt.Errorf("describing group %s: %w", st.ID, dg.Error)
	}
	st.State = dg.GroupState
	for _, m := range dg.Members {
		ms := MemberStatus{ID: m.MemberID, ClientID: m.ClientID, Host: strings.TrimPrefix(m.ClientHost, "/")}
		for _, t := range m.MemberAssignments.Topics {
			for _, p := range t.Partitions {
				owners[partitionKey(t.Topic, p)] = m.MemberID
				ms.Partitions++
			}
		}
		st.Members = append(st.Members, ms)
	}
	return owners, nil
}

// readOffsets lists the first and last offsets of every partition of the
// group's topics, and the group's committed offsets there.
func (s *Server) readOffsets(ctx context.Context, g Group) (*kafka.ListOffsetsResponse, map[[2]string]int64, error) {
	meta, err := s.client.Metadata(ctx, &kafka.MetadataRequest{Topics: g.Topics})
	if err != nil {
		return nil, nil, fmt.Errorf("reading the topics of group %s: %w", g.ID, err)
	}
	listReq := map[string][]kafka.OffsetRequest{}
	fetchReq := map[string][]int{}
	for _, t := range meta.Topics {
		if t.Error != nil {
			return nil, nil, fmt.Errorf("reading topic %s: %w", t.Name, t.Error)
		}
		for _, p := range t.Partitions {
			listReq[t.Name] = append(listReq[t.Name], kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
			fetchReq[t.Name] = append(fetchReq[t.Name], p.ID)
		}
	}
	ends, err := s.listOffsets(ctx, &kafka.ListOffsetsRequest{Topics: listReq})
	if err != nil {
		return nil, nil, fmt.Errorf("listing the offsets of group %s's topics: %w", g.ID, err)
	}
	commits, err := s.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: g.ID, Topics: fetchReq})
	if err != nil {
		return nil, nil, fmt.Errorf("fetching the offsets of group %s: %w", g.ID, err)
	}
	committed := map[[2]string]int64{}
	for topic, ps := range commits.Topics {
		for _, p := range ps {
			if p.Error == nil {
				committed[partitionKey(topic, p.Partition)] = p.CommittedOffset
			}
		}
	}
	return ends, committed, nil
}

// partitionStatus is one partition's offsets and lag, committed being -1 when
// the group has committed nothing there, and its state judged by the progress
// tracker.
func (s *Server) partitionStatus(now time.Time, group, topic string, p kafka.PartitionOffsets, committed int64, owner string) PartitionStatus {
	from := committed
	if committed < 0 {
		from = p.FirstOffset
	}
	ps := PartitionStatus{Topic: topic, Partition: p.Partition, Start: p.FirstOffset, End: p.LastOffset, Committed: committed,
		Lag: max(p.LastOffset-from, 0), Owner: owner}
	pr := s.progress.Observe(now, group, topic, p.Partition, committed, ps.Lag)
	switch {
	case ps.Lag == 0:
		ps.State = "caught up"
	case pr.Stalled:
		ps.State, ps.StalledFor = "stalled", pr.StalledFor
	case pr.Moved:
		ps.State = "moving"
	default:
		ps.State = "waiting"
	}
	return ps
}
