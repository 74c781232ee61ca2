package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

// An event PostgreSQL refuses (a NUL byte in a string: SQLSTATE 22021),
// handed past validation, fails the batch statement naming only the batch;
// PersistBatch then names the event, keeping PostgreSQL's error, and stores
// nothing.
func TestPersistBatchFindsTheEventWithBadData(t *testing.T) {
	ctx := context.Background()
	pool := testenv.Pool(t, testenv.Database(t))
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	batch := make([]EventWithDeltas, 20)
	for i := range batch {
		batch[i] = EventWithDeltas{Event: Event{EventID: fmt.Sprintf("$%043d", i), RoomID: "!room:hs.test", RoomVersion: "10",
			Sender: "@alice:hs.test", Type: "m.room.message", PDU: json.RawMessage(`{}`)}}
	}
	batch[7].RoomID = "!ro\x00om:hs.test"
	store := func(ctx context.Context, tx pgx.Tx, events []EventWithDeltas) ([]int64, error) {
		return storeEvents(ctx, tx, events) // no validation, no deltas
	}
	_, err := persistBatch(ctx, pool, batch, store)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22021" {
		t.Fatalf("error %v, want SQLSTATE 22021", err)
	}
	if want := "storing event " + batch[7].EventID + ": "; !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("error %q, want it to start %q", err, want)
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM events").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d events stored (%v), want 0", n, err)
	}
}
