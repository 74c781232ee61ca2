package sender_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/consumers/sender"
	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/schema"
)

func TestStoreKeepsBackoffAndTheLatestMissedEventPerRoom(t *testing.T) {
	ctx := context.Background()
	pool := testenv.Pool(t, testenv.Database(t))
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	s := sender.NewStore(pool)
	persist := func(room string, n int) (string, int64, string) {
		id := fmt.Sprintf("$%043d", n)
		pdu := fmt.Sprintf(`{"room_id":%q,"n":%d}`, room, n)
		pos, err := outbox.PersistBatch(ctx, pool, []outbox.EventWithDeltas{{Event: outbox.Event{EventID: id, RoomID: room, RoomVersion: "10", Sender: "@a:me.test", Type: "m.room.message", PDU: json.RawMessage(pdu)}}})
		if err != nil {
			t.Fatal(err)
		}
		return id, pos[0], pdu
	}

	now := time.UnixMilli(1_700_000_000_000)
	if r, err := s.LoadRetry(ctx, "a.test"); err != nil || r.Interval != 0 {
		t.Fatalf("unknown destination: %+v, %v", r, err)
	}
	want := queue.RetryState{Interval: 20 * time.Minute, NextAttempt: now.Add(22 * time.Minute)}
	if err := s.SaveRetry(ctx, "a.test", want); err != nil {
		t.Fatal(err)
	}
	if r, err := s.LoadRetry(ctx, "a.test"); err != nil || r.Interval != want.Interval || !r.NextAttempt.Equal(want.NextAttempt) {
		t.Fatalf("loaded %+v, %v; want %+v", r, err, want)
	}

	id1, pos1, _ := persist("!r1:me.test", 1)
	id2, pos2, pdu2 := persist("!r1:me.test", 2)
	id3, pos3, pdu3 := persist("!r2:me.test", 3)
	for _, c := range []queue.CatchUp{{RoomID: "!r1:me.test", Position: pos2, EventID: id2}, {RoomID: "!r1:me.test", Position: pos1, EventID: id1}, {RoomID: "!r2:me.test", Position: pos3, EventID: id3}} {
		// One at a time and out of order: an older position never replaces a newer one.
		if err := s.RecordCatchUp(ctx, "a.test", []queue.CatchUp{c}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RecordCatchUp(ctx, "b.test", []queue.CatchUp{{RoomID: "!gone:me.test", Position: 99, EventID: "$notstored"}}); err != nil {
		t.Fatal(err)
	}
	rooms, err := s.CatchUpRooms(ctx, "a.test", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(rooms) != 2 || rooms[0].EventID != id2 || string(rooms[0].PDU) != pdu2 || rooms[1].EventID != id3 || string(rooms[1].PDU) != pdu3 {
		t.Fatalf("catch-up rooms %+v, want the latest of each room, oldest first, with its PDU", rooms)
	}
	if page, _ := s.CatchUpRooms(ctx, "a.test", 1); len(page) != 1 || page[0].EventID != id2 {
		t.Fatalf("limited read %+v", page)
	}
	if gone, _ := s.CatchUpRooms(ctx, "b.test", 10); len(gone) != 1 || gone[0].PDU != nil {
		t.Fatalf("a missing event must come back without a PDU: %+v", gone)
	}

	// a.test is backed off until now+22m; b.test has no backoff.
	for _, tc := range []struct {
		at    time.Time
		after string
		limit int
		want  string
	}{
		{now, "", 10, "[b.test]"},
		{now.Add(23 * time.Minute), "", 10, "[a.test b.test]"},
		{now.Add(23 * time.Minute), "", 1, "[a.test]"},
		{now.Add(23 * time.Minute), "a.test", 1, "[b.test]"},
		{now.Add(23 * time.Minute), "b.test", 1, "[]"},
	} {
		got, err := s.DueDestinations(ctx, tc.at, tc.after, tc.limit)
		if err != nil || fmt.Sprint(got) != tc.want {
			t.Fatalf("due at %s after %q: %v, %v; want %s", tc.at.Sub(now), tc.after, got, err, tc.want)
		}
	}

	// A newer event recorded while the older one was being sent keeps its row.
	id4, pos4, _ := persist("!r1:me.test", 4)
	if err := s.RecordCatchUp(ctx, "a.test", []queue.CatchUp{{RoomID: "!r1:me.test", Position: pos4, EventID: id4}}); err != nil {
		t.Fatal(err)
	}
	for _, c := range rooms {
		if err := s.ClearCatchUp(ctx, "a.test", c); err != nil {
			t.Fatal(err)
		}
	}
	if left, _ := s.CatchUpRooms(ctx, "a.test", 10); len(left) != 1 || left[0].EventID != id4 {
		t.Fatalf("after clearing: %+v, want only the newer event of !r1", left)
	}
	var failure1, failure2 *int64
	_ = pool.QueryRow(ctx, "SELECT failure_ts FROM sender_destinations WHERE destination = 'a.test'").Scan(&failure1)
	if err := s.SaveRetry(ctx, "a.test", queue.RetryState{Interval: 40 * time.Minute, NextAttempt: now.Add(44 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	_ = pool.QueryRow(ctx, "SELECT failure_ts FROM sender_destinations WHERE destination = 'a.test'").Scan(&failure2)
	if failure1 == nil || failure2 == nil || *failure1 != *failure2 {
		t.Fatalf("failure_ts %v then %v: want the start of the run of failures, kept", failure1, failure2)
	}
	if err := s.SaveRetry(ctx, "a.test", queue.RetryState{}); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.LoadRetry(ctx, "a.test"); r.Interval != 0 {
		t.Fatalf("backoff not cleared: %+v", r)
	}
	_ = pool.QueryRow(ctx, "SELECT failure_ts FROM sender_destinations WHERE destination = 'a.test'").Scan(&failure1)
	if failure1 != nil {
		t.Fatal("failure_ts kept after a success")
	}

	for _, acked := range [][]queue.RoomPosition{{{RoomID: "!r", Position: pos1}, {RoomID: "!s", Position: pos3}, {RoomID: "!r", Position: pos1 + 1}},
		{{RoomID: "!r", Position: pos1}, {RoomID: "!s", Position: pos1}}} { // never moves back
		if err := s.RecordSuccess(ctx, "a.test", acked); err != nil {
			t.Fatal(err)
		}
	}
	var last int64
	if err := pool.QueryRow(ctx, "SELECT last_successful_position FROM sender_destinations WHERE destination = 'a.test'").Scan(&last); err != nil || last != pos3 {
		t.Fatalf("last successful position %d, %v; want %d", last, err, pos3)
	}
	if rooms, err := s.AckedRooms(ctx, "a.test"); err != nil || fmt.Sprint(rooms) != fmt.Sprint(map[string]int64{"!r": pos1 + 1, "!s": pos3}) {
		t.Fatalf("rooms accepted %v, %v; want !r at %d and !s at %d", rooms, err, pos1+1, pos3)
	}

	// Paused by an operator: loaded as such, never due, and kept by SaveRetry.
	if _, err := pool.Exec(ctx, "UPDATE sender_destinations SET paused = true WHERE destination = 'a.test'"); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveRetry(ctx, "a.test", queue.RetryState{}); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.LoadRetry(ctx, "a.test"); !r.Paused {
		t.Fatal("paused not loaded, or cleared by SaveRetry")
	}
	if due, _ := s.DueDestinations(ctx, now.Add(time.Hour), "", 10); fmt.Sprint(due) != "[b.test]" {
		t.Fatalf("due %v: a paused destination must not be woken", due)
	}
}

// Successes recorded at once by many destinations' workers (written together,
// several calls to a statement) keep each (destination, room)'s greatest
// position and each destination's greatest, whatever the calls' order.
func TestConcurrentSuccessesKeepTheGreatestPositions(t *testing.T) {
	ctx := context.Background()
	pool := testenv.Pool(t, testenv.Database(t))
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	s := sender.NewStore(pool)
	const dests, calls, rooms = 20, 30, 7
	var g errgroup.Group
	for d := 0; d < dests; d++ {
		for c := 0; c < calls; c++ {
			g.Go(func() error {
				var acked []queue.RoomPosition
				for r := 0; r < rooms; r++ {
					// Room r of every call; positions rise with c but the
					// calls run in any order, and a room twice in one call.
					acked = append(acked, queue.RoomPosition{RoomID: fmt.Sprintf("!r%d", r), Position: int64(c*100 + r)},
						queue.RoomPosition{RoomID: fmt.Sprintf("!r%d", r), Position: int64(c*100 + r - 1)})
				}
				return s.RecordSuccess(ctx, fmt.Sprintf("d%d.test", d), acked)
			})
		}
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	for d := 0; d < dests; d++ {
		dest := fmt.Sprintf("d%d.test", d)
		got, err := s.AckedRooms(ctx, dest)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int64{}
		for r := 0; r < rooms; r++ {
			want[fmt.Sprintf("!r%d", r)] = int64((calls-1)*100 + r)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%s accepted %v, want %v", dest, got, want)
		}
		var last int64
		if err := pool.QueryRow(ctx, "SELECT last_successful_position FROM sender_destinations WHERE destination = $1", dest).Scan(&last); err != nil || last != int64((calls-1)*100+rooms-1) {
			t.Fatalf("%s last successful position %d (%v), want %d", dest, last, err, (calls-1)*100+rooms-1)
		}
	}
}
