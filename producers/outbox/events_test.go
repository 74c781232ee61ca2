package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/schema"
)

// message is a non-state event (no state key, no deltas) in room.
func message(eventID, room string) outbox.EventWithDeltas {
	return outbox.EventWithDeltas{Event: outbox.Event{EventID: eventID, RoomID: room, RoomVersion: "10", Sender: "@alice:hs.test",
		Type: "m.room.message", PDU: json.RawMessage(`{"type":"m.room.message","room_id":"` + room + `","content":{"body":"hi"}}`)}}
}

// randomID is an event id of room version 10 with random digits, so that a
// batch's order is not the order of its event ids.
func randomID(r *rand.Rand) string { return fmt.Sprintf("$%043d", r.Uint64()) }

// A batch of 2,000 events, stored while other transactions store theirs,
// takes positions that increase in batch order (event ids in random order,
// rooms and state and non-state events mixed), and the rows and their state
// deltas are stored at the positions returned.
func TestPersistBatchPositionsFollowBatchOrder(t *testing.T) {
	ctx := context.Background()
	pool := testenv.Pool(t, testenv.Database(t))
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))

	// Three writers, each storing batches of 10 in its own transactions
	// until the big batch is stored.
	stop := make(chan struct{})
	var writers errgroup.Group
	failed := make(chan error, 3) // seen early by waitForRows
	for w := range 3 {
		seed := r.Uint64()
		writers.Go(func() error {
			r := rand.New(rand.NewPCG(seed, 0))
			for {
				select {
				case <-stop:
					return nil
				default:
				}
				batch := make([]outbox.EventWithDeltas, 10)
				for i := range batch {
					batch[i] = message(randomID(r), fmt.Sprintf("!w%d:hs.test", w))
				}
				if _, err := outbox.PersistBatch(ctx, pool, batch); err != nil {
					err = fmt.Errorf("writer %d: %w", w, err)
					failed <- err
					return err
				}
			}
		})
	}
	var once sync.Once
	var writersErr error
	stopWriters := func() { once.Do(func() { close(stop); writersErr = writers.Wait() }) }
	defer stopWriters()
	waitForRows(t, pool, 30, failed) // the writers are storing

	big := make([]outbox.EventWithDeltas, 2000)
	for i := range big {
		room := fmt.Sprintf("!r%d:hs.test", i%7)
		if i%3 == 0 {
			big[i] = member(randomID(r), fmt.Sprintf("@u%d:remote.test", i), "join")
			big[i].RoomID = room
			big[i].PDU = json.RawMessage(strings.Replace(string(big[i].PDU), "!room:hs.test", room, 1))
		} else {
			big[i] = message(randomID(r), room)
		}
	}
	positions, err := outbox.PersistBatch(ctx, pool, big)
	stopWriters()
	if err != nil {
		t.Fatal(err)
	}
	if writersErr != nil {
		t.Fatal(writersErr)
	}
	if len(positions) != len(big) {
		t.Fatalf("%d positions for %d events", len(positions), len(big))
	}
	for i := 1; i < len(positions); i++ {
		if positions[i] <= positions[i-1] {
			t.Fatalf("event %d at position %d, event %d at %d: want increasing in batch order", i-1, positions[i-1], i, positions[i])
		}
	}

	ids := make([]string, len(big))
	for i, ev := range big {
		ids[i] = ev.EventID
	}
	rows, err := pool.Query(ctx, "SELECT event_id, stream_ordering FROM events WHERE event_id = ANY($1) ORDER BY stream_ordering", ids)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		ID  string
		Pos int64
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(big) {
		t.Fatalf("%d of %d events stored", len(got), len(big))
	}
	for i, g := range got {
		if g.ID != ids[i] || g.Pos != positions[i] {
			t.Fatalf("stored %d-th by position: %s at %d; want %s at %d", i, g.ID, g.Pos, ids[i], positions[i])
		}
	}
	var deltas, misplaced int
	if err := pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE e.event_id IS DISTINCT FROM d.event_id)
		FROM current_state_delta_stream d LEFT JOIN events e ON e.stream_ordering = d.stream_id
		WHERE d.stream_id BETWEEN $1 AND $2`, positions[0], positions[len(positions)-1]).Scan(&deltas, &misplaced); err != nil {
		t.Fatal(err)
	}
	if deltas != (len(big)+2)/3 || misplaced != 0 {
		t.Fatalf("%d state deltas in the batch's range, %d not at their event's position; want %d, 0", deltas, misplaced, (len(big)+2)/3)
	}
	var others int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM events WHERE room_id LIKE '!w%'").Scan(&others); err != nil {
		t.Fatal(err)
	}
	t.Logf("positions %d to %d; the concurrent writers stored %d events", positions[0], positions[len(positions)-1], others)
}

// waitForRows polls until events holds at least n rows, failing on an error
// from failed.
func waitForRows(t *testing.T, pool *pgxpool.Pool, n int, failed <-chan error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var have int
		if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM events").Scan(&have); err != nil {
			t.Fatal(err)
		}
		if have >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events stored after 30 s, want %d", have, n)
		}
		select {
		case err := <-failed:
			t.Fatal(err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// An event whose event_id is taken, by a stored event or by an earlier event
// of its batch, fails the batch with PostgreSQL's unique violation, named
// "storing event <id>" as when events were stored one by one, whether the
// batch is stored by PersistBatch or by Persist in the caller's transaction;
// nothing of the batch is stored.
func TestPersistNamesTheDuplicateEvent(t *testing.T) {
	ctx := context.Background()
	pool := testenv.Pool(t, testenv.Database(t))
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	stored := message(randomID(r), "!room:hs.test")
	if _, err := outbox.PersistBatch(ctx, pool, []outbox.EventWithDeltas{stored}); err != nil {
		t.Fatal(err)
	}
	inCallersTx := func(ctx context.Context, pool *pgxpool.Pool, events []outbox.EventWithDeltas) ([]int64, error) {
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(ctx) }()
		return outbox.Persist(ctx, tx, events)
	}
	tests := []struct {
		name string
		bad  func(batch []outbox.EventWithDeltas) int // makes one event bad, returns its index
	}{
		{"event stored before", func(batch []outbox.EventWithDeltas) int {
			batch[17] = stored
			return 17
		}},
		{"event twice in the batch", func(batch []outbox.EventWithDeltas) int {
			batch[30] = batch[5]
			return 30
		}},
	}
	for _, tc := range tests {
		for _, via := range []struct {
			name    string
			persist func(context.Context, *pgxpool.Pool, []outbox.EventWithDeltas) ([]int64, error)
		}{{"PersistBatch", outbox.PersistBatch}, {"Persist", inCallersTx}} {
			t.Run(tc.name+" via "+via.name, func(t *testing.T) {
				batch := make([]outbox.EventWithDeltas, 50)
				for i := range batch {
					batch[i] = message(randomID(r), "!room:hs.test")
				}
				bad := tc.bad(batch)
				_, err := via.persist(ctx, pool, batch)
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Code != "23505" || pgErr.ConstraintName != "events_event_id_key" {
					t.Fatalf("error %v, want a unique violation on events_event_id_key", err)
				}
				if want := "storing event " + batch[bad].EventID + ": "; !strings.HasPrefix(err.Error(), want) {
					t.Fatalf("error %q, want it to start %q", err, want)
				}
				ids := make([]string, 0, len(batch))
				for i, ev := range batch {
					if i != bad && ev.EventID != stored.EventID {
						ids = append(ids, ev.EventID)
					}
				}
				var n int
				if err := pool.QueryRow(ctx, "SELECT count(*) FROM events WHERE event_id = ANY($1)", ids).Scan(&n); err != nil || n != 0 {
					t.Fatalf("%d events of the failed batch stored (%v), want 0", n, err)
				}
			})
		}
	}
}
