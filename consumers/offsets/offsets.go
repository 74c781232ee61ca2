// Package offsets shows and moves a consumer group's committed offsets with the
// semantics of Kafka's kafka-consumer-groups.sh: a plan first, offsets clamped
// to what the partitions still hold, and no change while the group has members.
// It is how an operator replays a topic into a stage (move the group back and
// start it) or skips what a stage must not see again.
package offsets

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
)

// Target says where a reset moves each selected partition.
type Target struct {
	Mode Mode
	// Offset is the offset of ModeOffset, the signed shift of ModeShift.
	Offset int64
	// Time is the instant of ModeDatetime: the first record at or after it.
	Time time.Time
	// Duration is how far back ModeDuration goes from now.
	Duration time.Duration
}

// Mode is one of kafka-consumer-groups.sh's reset specifications.
type Mode int

// The reset specifications.
const (
	ModeEarliest Mode = iota + 1 // --to-earliest: the oldest record still held
	ModeLatest                   // --to-latest: the end of the partition (skip everything)
	ModeOffset                   // --to-offset N
	ModeShift                    // --shift-by ±N from the committed offset
	ModeDatetime                 // --to-datetime: first record at or after a time
	ModeDuration                 // --by-duration: first record at or after now minus a duration
)

// Selection names the partitions to act on.
type Selection struct {
	// AllTopics selects every partition the group has committed offsets for.
	AllTopics bool
	// Topics maps a topic to its partitions; an empty list means all of them.
	Topics map[string][]int
}

// Row is one partition's offsets.
type Row struct {
	Topic     string
	Partition int
	// Current is the committed offset, or -1 when the group has none.
	Current int64
	// New is where a reset moves it (Show leaves it -1).
	New int64
	// Start and End are the oldest offset held and the high watermark.
	Start, End int64
	// Owner is the member holding the partition ("" when none).
	Owner string
}

// Lag is how many records the group has left in the partition from off
// (from the log start when nothing is committed).
func (r Row) Lag(off int64) int64 {
	if off < 0 {
		off = r.Start
	}
	return max(r.End-off, 0)
}

// Member is a member of a consumer group, as DescribeGroups reports it.
type Member struct {
	ID, ClientID, Host string
}

// ActiveGroupError is returned by Execute while the group has members: a
// member would overwrite the new offsets with its own at its next commit.
type ActiveGroupError struct {
	Group   string
	State   string
	Members []Member
}

func (e *ActiveGroupError) Error() string {
	names := make([]string, len(e.Members))
	for i, m := range e.Members {
		names[i] = fmt.Sprintf("%s (client %s, host %s)", m.ID, m.ClientID, m.Host)
	}
	return fmt.Sprintf("offsets of group %s can only be reset while it is inactive, but it is %s with %d member(s): %s; stop them first",
		e.Group, e.State, len(e.Members), strings.Join(names, ", "))
}

// Tool talks to the brokers for one operator command.
type Tool struct {
	client *kafka.Client
	now    func() time.Time
}

// New returns a Tool for the brokers.
func New(brokers []string) *Tool {
	return &Tool{client: &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 30 * time.Second}, now: time.Now}
}

// Show returns the selected partitions' committed offsets, ends and owners.
func (t *Tool) Show(ctx context.Context, group string, sel Selection) ([]Row, error) {
	parts, err := t.partitions(ctx, group, sel)
	if err != nil {
		return nil, err
	}
	rows, err := t.rows(ctx, group, parts)
	if err != nil {
		return nil, err
	}
	desc, err := t.describe(ctx, group)
	if err != nil {
		return nil, err
	}
	for i := range rows {
		rows[i].Owner = desc.owners[partKey{rows[i].Topic, rows[i].Partition}]
	}
	return rows, nil
}

// Plan returns, for each selected partition, where target moves the group's
// offset, clamped to the offsets the partition still holds. It changes nothing.
func (t *Tool) Plan(ctx context.Context, group string, sel Selection, target Target) ([]Row, error) {
	parts, err := t.partitions(ctx, group, sel)
	if err != nil {
		return nil, err
	}
	rows, err := t.rows(ctx, group, parts)
	if err != nil {
		return nil, err
	}
	var byTime map[partKey]int64
	switch target.Mode {
	case ModeDatetime:
		byTime, err = t.offsetsAt(ctx, parts, target.Time)
	case ModeDuration:
		byTime, err = t.offsetsAt(ctx, parts, t.now().Add(-target.Duration))
	}
	if err != nil {
		return nil, err
	}
	for i := range rows {
		r := &rows[i]
		var want int64
		switch target.Mode {
		case ModeEarliest:
			want = r.Start
		case ModeLatest:
			want = r.End
		case ModeOffset:
			want = target.Offset
		case ModeShift:
			cur := r.Current
			if cur < 0 {
				cur = r.Start // a member would start there (kafka.FirstOffset)
			}
			want = cur + target.Offset
		case ModeDatetime, ModeDuration:
			want = byTime[partKey{r.Topic, r.Partition}]
			if want < 0 {
				want = r.End // no record that new: Kafka moves to the end
			}
		default:
			return nil, fmt.Errorf("unknown reset mode %d", target.Mode)
		}
		r.New = min(max(want, r.Start), r.End)
	}
	return rows, nil
}

// Inactive returns an *ActiveGroupError naming the members when group has
// any: a tool that writes what the group's members write must not run beside
// them.
func (t *Tool) Inactive(ctx context.Context, group string) error {
	desc, err := t.describe(ctx, group)
	if err != nil {
		return err
	}
	if len(desc.members) > 0 {
		return &ActiveGroupError{Group: group, State: desc.state, Members: desc.members}
	}
	return nil
}

// Execute commits the planned offsets for the group, refusing with an
// *ActiveGroupError while it has members.
func (t *Tool) Execute(ctx context.Context, group string, plan []Row) error {
	if err := t.Inactive(ctx, group); err != nil {
		return err
	}
	commits := map[string][]kafka.OffsetCommit{}
	for _, r := range plan {
		commits[r.Topic] = append(commits[r.Topic], kafka.OffsetCommit{Partition: r.Partition, Offset: r.New})
	}
	var errs []error
	err := whileCoordinatorMoves(ctx, func() error {
		resp, err := t.client.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1, Topics: commits})
		if err != nil {
			return err
		}
		errs = errs[:0]
		for topic, parts := range resp.Topics {
			for _, p := range parts {
				if p.Error != nil {
					errs = append(errs, fmt.Errorf("%s/%d: %w", topic, p.Partition, p.Error))
				}
			}
		}
		if len(errs) > 0 {
			return errs[0] // temporary ones are tried again
		}
		return nil
	})
	if err != nil && len(errs) == 0 {
		return fmt.Errorf("committing offsets of group %s: %w", group, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("committing offsets of group %s: %w", group, err)
	}
	return nil
}

type partKey struct {
	topic     string
	partition int
}

// partitions resolves a selection into sorted (topic, partition) pairs.
func (t *Tool) partitions(ctx context.Context, group string, sel Selection) ([]partKey, error) {
	var out []partKey
	if sel.AllTopics {
		var resp *kafka.OffsetFetchResponse
		err := whileCoordinatorMoves(ctx, func() (err error) {
			resp, err = t.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group})
			if err == nil && resp.Error != nil && !errors.Is(resp.Error, kafka.GroupIdNotFound) {
				err = resp.Error
			}
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("fetching the offsets of group %s: %w", group, err)
		}
		for topic, parts := range resp.Topics {
			for _, p := range parts {
				out = append(out, partKey{topic, p.Partition})
			}
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("group %s has no committed offsets: name the topics with --topic", group)
		}
	} else {
		topics := make([]string, 0, len(sel.Topics))
		for topic := range sel.Topics {
			topics = append(topics, topic)
		}
		if len(topics) == 0 {
			return nil, errors.New("no topic selected: give --topic or --all-topics")
		}
		meta, err := t.client.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
		if err != nil {
			return nil, fmt.Errorf("reading topic metadata: %w", err)
		}
		held := map[string]map[int]bool{}
		for _, mt := range meta.Topics {
			if mt.Error != nil {
				return nil, fmt.Errorf("topic %s: %w", mt.Name, mt.Error)
			}
			held[mt.Name] = map[int]bool{}
			for _, p := range mt.Partitions {
				held[mt.Name][p.ID] = true
			}
		}
		for topic, want := range sel.Topics {
			if len(want) == 0 {
				for p := range held[topic] {
					out = append(out, partKey{topic, p})
				}
				continue
			}
			for _, p := range want {
				if !held[topic][p] {
					return nil, fmt.Errorf("topic %s has no partition %d (it has %d)", topic, p, len(held[topic]))
				}
				out = append(out, partKey{topic, p})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].topic != out[j].topic {
			return out[i].topic < out[j].topic
		}
		return out[i].partition < out[j].partition
	})
	return out, nil
}
