package relay_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/schema"
)

func TestPublishesPresenceLatestPerUserWithoutSkippingLateCommits(t *testing.T) {
	e := setup(t, nil)
	ctx := context.Background()
	upsert := `INSERT INTO presence_stream (stream_id, user_id, state, status_msg, last_active_ts, currently_active)
		VALUES (fedpipe_next_stream_ordering(), $1, $2, $3, $4, $2 = 'online')
		ON CONFLICT (user_id) DO UPDATE SET stream_id = EXCLUDED.stream_id, state = EXCLUDED.state, status_msg = EXCLUDED.status_msg,
			last_active_ts = EXCLUDED.last_active_ts, currently_active = EXCLUDED.currently_active`
	want := map[string]string{}
	for i := range 20 {
		u := fmt.Sprintf("@u%d:hs.test", i)
		if _, err := e.pool.Exec(ctx, upsert, u, "online", nil, 1000+i); err != nil {
			t.Fatal(err)
		}
		want[u] = "online"
	}
	// Events share the stream sequence; they go to their own topic.
	if _, err := outbox.PersistBatch(ctx, e.pool, []outbox.EventWithDeltas{ev("!r:hs.test", 1, "")}); err != nil {
		t.Fatal(err)
	}
	// A transaction that took its position early and commits late.
	late, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Rollback(ctx)
	if _, err := late.Exec(ctx, upsert, "@late:hs.test", "unavailable", "<b>away</b>", 7); err != nil {
		t.Fatal(err)
	}
	msg := "lunch & <more>"
	for i := range 5 { // superseded before and after the relay starts
		if _, err := e.pool.Exec(ctx, upsert, fmt.Sprintf("@u%d:hs.test", i), "offline", msg, 2000); err != nil {
			t.Fatal(err)
		}
		want[fmt.Sprintf("@u%d:hs.test", i)] = "offline"
	}
	var latePos int64
	if err := late.QueryRow(ctx, `SELECT stream_id FROM presence_stream WHERE user_id = '@late:hs.test'`).Scan(&latePos); err != nil {
		t.Fatal(err)
	}
	stop, reg := e.relay()
	defer stop()
	// Nothing is published while a transaction that took an earlier position
	// is open (the relay waits for it). Rather than a window of time, wait
	// until the relay has asked twice whether the transactions holding
	// unpublished positions have ended: every check comes after the late
	// transaction began (the relay started after it), so the first found it
	// running and the second is the relay looking again and still waiting. A
	// relay that skipped ahead stores a position past it instead, which ends
	// the wait too and fails below.
	testenv.Eventually(t, 10*time.Second, "the relay to check the open transaction twice (or to publish past it)", func() bool {
		return testenv.Value(t, reg, "fedpipe_relay_visibility_checks_total") >= 2 || storedPosition(t, e.pool, "presence") >= latePos
	})
	if published := storedPosition(t, e.pool, "presence"); published >= latePos {
		t.Fatalf("presence published up to %d while the transaction of position %d was open", published, latePos)
	}
	if err := late.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	want["@late:hs.test"] = "unavailable"
	msgs := readAll(t, e.addr, e.k.Topic("presence"), len(want))
	got := map[string]schema.PresenceRecord{}
	for _, m := range msgs {
		if err := schema.ValidateRecord("presence", m.Value); err != nil {
			t.Fatalf("%v: %s", err, m.Value)
		}
		rec, err := schema.DecodePresenceRecord(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Key) != rec.UserID {
			t.Fatalf("key %q for %s", m.Key, rec.UserID)
		}
		h := map[string]string{}
		for _, x := range m.Headers {
			h[x.Key] = string(x.Value)
		}
		if h[schema.HeaderKind] != schema.KindPresence || h[schema.HeaderPosition] != strconv.FormatInt(rec.Position, 10) {
			t.Fatalf("headers %v of %s", h, m.Value)
		}
		if prev, ok := got[rec.UserID]; ok && prev.Position >= rec.Position {
			t.Fatalf("%s: position %d after %d", rec.UserID, rec.Position, prev.Position)
		}
		got[rec.UserID] = rec
	}
	for u, s := range want {
		if got[u].Presence != s {
			t.Errorf("%s: last published %q, want %q", u, got[u].Presence, s)
		}
	}
	if r := got["@u0:hs.test"]; r.StatusMsg == nil || *r.StatusMsg != msg {
		t.Errorf("status_msg of u0: %+v", r)
	}
	if r := got["@late:hs.test"]; r.StatusMsg == nil || *r.StatusMsg != "<b>away</b>" || r.LastActiveTS != 7 {
		t.Errorf("late commit published as %+v", r)
	}
	var pos int64
	if err := e.pool.QueryRow(ctx, `SELECT position FROM relay_positions WHERE stream = 'presence'`).Scan(&pos); err != nil && err != pgx.ErrNoRows {
		t.Fatal(err)
	}
	if pos < got["@late:hs.test"].Position {
		t.Errorf("presence position %d is behind the last published %d", pos, got["@late:hs.test"].Position)
	}
}

// Presence batches are bounded by MaxRoundBytes too, like the room stream's,
// and cutting them loses or reorders nothing.
func TestPresenceBatchesBoundedByBytes(t *testing.T) {
	e := setup(t, nil)
	ctx := context.Background()
	status := strings.Repeat("s", 200)
	for i := range 30 {
		if _, err := e.pool.Exec(ctx, `INSERT INTO presence_stream (stream_id, user_id, state, status_msg, last_active_ts, currently_active)
			VALUES (fedpipe_next_stream_ordering(), $1, 'online', $2, 1, true)`, fmt.Sprintf("@u%d:hs.test", i), status); err != nil {
			t.Fatal(err)
		}
	}
	var log ackLog
	reg := runOrdered(t, e, &log, e.room, 1500) // about four records a batch
	testenv.Eventually(t, 20*time.Second, "30 presence records acknowledged", func() bool { return len(log.snapshot()) == 30 })
	var last int64
	for _, a := range log.snapshot() {
		if a.position <= last {
			t.Fatalf("presence at %d published after %d", a.position, last)
		}
		last = a.position
	}
	if n := metricValue(t, reg, "fedpipe_relay_publish_duration_seconds", "presence"); n < 8 {
		t.Fatalf("%v presence batches, want the byte bound (not only BatchSize 7) to split the 30 records into several", n)
	}
}
