package router

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/schema"
)

// RebuildProgress is how far a rebuild has read the state topic.
type RebuildProgress struct {
	Read, Total int64 // records read, and in the topic when the rebuild began
	Elapsed     time.Duration
}

// Rate is records read per second so far.
func (p RebuildProgress) Rate() float64 {
	if p.Elapsed <= 0 {
		return 0
	}
	return float64(p.Read) / p.Elapsed.Seconds()
}

// ETA is the time left at the rate so far (0 when unknown).
func (p RebuildProgress) ETA() time.Duration {
	if r := p.Rate(); r > 0 && p.Total > p.Read {
		return time.Duration(float64(p.Total-p.Read) / r * float64(time.Second))
	}
	return 0
}

// RebuildSummary is what a rebuild stored.
type RebuildSummary struct {
	Records, Rooms, Members int64
	Elapsed                 time.Duration
}

// Rebuild replaces the router's membership tables (router_rooms,
// router_room_members, router_membership_changes) with what the compacted
// state topic holds: the latest m.room.member delta of every (room, user),
// read from each partition's start to its end when the rebuild began. It
// sends nothing. The router group must not be running (its members would
// write beside it); the caller checks. progress is called about every
// second and at the end.
func Rebuild(ctx context.Context, pool *pgxpool.Pool, brokers []string, stateTopic string, progress func(RebuildProgress)) (RebuildSummary, error) {
	start := time.Now()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 30 * time.Second}
	bounds, total, err := topicBounds(ctx, client, stateTopic)
	if err != nil {
		return RebuildSummary{}, err
	}
	latest := map[[2]string]schema.RoomRecord{} // (room, user) → its newest member delta
	var read int64
	report := func() { progress(RebuildProgress{Read: read, Total: total, Elapsed: time.Since(start)}) }
	last := time.Now()
	for p, b := range bounds {
		if b[1] <= b[0] {
			continue
		}
		err := readPartition(ctx, brokers, stateTopic, p, b, func(m kafka.Message) error {
			read++
			if time.Since(last) >= time.Second {
				report()
				last = time.Now()
			}
			rec, err := schema.DecodeRoomRecord(m.Value)
			if err != nil || rec.Kind != schema.KindStateDelta || rec.Type != "m.room.member" || rec.StateKey == nil {
				return nil // not membership; a record the router would dead-letter is skipped here too
			}
			k := [2]string{rec.RoomID, *rec.StateKey}
			if old, ok := latest[k]; !ok || rec.Position >= old.Position {
				latest[k] = rec
			}
			return nil
		})
		if err != nil {
			return RebuildSummary{}, err
		}
	}
	report()
	sum, err := storeRebuilt(ctx, pool, latest)
	sum.Records, sum.Elapsed = read, time.Since(start)
	return sum, err
}

// topicBounds is each partition's log start and end, and the records between.
func topicBounds(ctx context.Context, client *kafka.Client, topic string) (map[int][2]int64, int64, error) {
	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, 0, fmt.Errorf("reading the partitions of %s: %w", topic, err)
	}
	var reqs []kafka.OffsetRequest
	for _, t := range meta.Topics {
		if t.Error != nil {
			return nil, 0, fmt.Errorf("reading the partitions of %s: %w", topic, t.Error)
		}
		for _, p := range t.Partitions {
			reqs = append(reqs, kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
		}
	}
	resp, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, 0, fmt.Errorf("listing the offsets of %s: %w", topic, err)
	}
	bounds := map[int][2]int64{}
	var total int64
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			return nil, 0, fmt.Errorf("listing the offsets of %s/%d: %w", topic, p.Partition, p.Error)
		}
		bounds[p.Partition] = [2]int64{p.FirstOffset, p.LastOffset}
		total += p.LastOffset - p.FirstOffset
	}
	return bounds, total, nil
}

// readPartition hands each record of partition p from b[0] up to b[1] to f.
// Compaction leaves gaps in the offsets: the end is reached at the first
// record at or past b[1]-1.
func readPartition(ctx context.Context, brokers []string, topic string, p int, b [2]int64, f func(kafka.Message) error) error {
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p, MaxWait: 200 * time.Millisecond, MaxBytes: 10 << 20})
	defer r.Close()
	if err := r.SetOffset(b[0]); err != nil {
		return err
	}
	for {
		m, err := r.FetchMessage(ctx) // a partition reader: nothing is committed
		if err != nil {
			return fmt.Errorf("reading %s/%d: %w", topic, p, err)
		}
		if err := f(m); err != nil {
			return err
		}
		if m.Offset >= b[1]-1 {
			return nil
		}
	}
}

// storeRebuilt replaces the membership tables with latest, in one
// transaction: each (room, user)'s newest delta is its history, its joined
// users the members, its newest member delta the room's last position.
func storeRebuilt(ctx context.Context, pool *pgxpool.Pool, latest map[[2]string]schema.RoomRecord) (RebuildSummary, error) {
	var sum RebuildSummary
	var changes, members [][]any
	lastPos := map[string]int64{}
	for k, rec := range latest {
		joined := rec.Membership == "join"
		changes = append(changes, []any{k[0], k[1], rec.Position, joined})
		if joined {
			members = append(members, []any{k[0], k[1]})
		}
		lastPos[k[0]] = max(lastPos[k[0]], rec.Position)
	}
	var rooms [][]any
	for room, pos := range lastPos {
		rooms = append(rooms, []any{room, pos})
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `TRUNCATE router_rooms, router_room_members, router_membership_changes`); err != nil {
			return err
		}
		for _, c := range []struct {
			table string
			cols  []string
			rows  [][]any
		}{
			{"router_rooms", []string{"room_id", "last_position"}, rooms},
			{"router_room_members", []string{"room_id", "user_id"}, members},
			{"router_membership_changes", []string{"room_id", "user_id", "position", "joined"}, changes},
		} {
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{c.table}, c.cols, pgx.CopyFromRows(c.rows)); err != nil {
				return fmt.Errorf("writing %s: %w", c.table, err)
			}
		}
		return nil
	})
	if err != nil {
		return sum, fmt.Errorf("storing the rebuilt membership: %w", err)
	}
	sum.Rooms, sum.Members = int64(len(rooms)), int64(len(members))
	return sum, nil
}
