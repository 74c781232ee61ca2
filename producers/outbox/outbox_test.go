package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/schema"
)

const hashID = "$abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456"

func ptr(s string) *string { return &s }

func member(eventID, target, membership string) outbox.EventWithDeltas {
	return outbox.EventWithDeltas{
		Event: outbox.Event{EventID: eventID, RoomID: "!room:hs.test", RoomVersion: "10", Sender: "@alice:hs.test",
			Type: "m.room.member", StateKey: ptr(target),
			PDU: json.RawMessage(`{"type":"m.room.member", "room_id":"!room:hs.test","sender":"@alice:hs.test","state_key":"` + target + `","content":{"membership":"` + membership + `","body":"caf\u00e9"}}`)},
		Deltas: []outbox.StateDelta{{Type: "m.room.member", StateKey: target, EventID: eventID, Membership: membership}},
	}
}

func TestValidate(t *testing.T) {
	good := member(hashID, "@bob:remote.test", "join")
	tests := []struct {
		name   string
		change func(*outbox.EventWithDeltas)
		field  string // "" when valid
	}{
		{"valid member event", func(*outbox.EventWithDeltas) {}, ""},
		{"room version 1 with server event id", func(e *outbox.EventWithDeltas) {
			e.RoomVersion, e.EventID, e.Deltas[0].EventID = "1", "$abc:hs.test", "$abc:hs.test"
		}, ""},
		{"room version 12 hash room id", func(e *outbox.EventWithDeltas) {
			e.RoomVersion, e.RoomID, e.PDU = "12", "!abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456", json.RawMessage(`{}`)
		}, ""},
		{"room version 13 unknown", func(e *outbox.EventWithDeltas) { e.RoomVersion = "13" }, "room_version"},
		{"room version with leading zero", func(e *outbox.EventWithDeltas) { e.RoomVersion = "010" }, "room_version"},
		{"event id of version 1 shape in version 10", func(e *outbox.EventWithDeltas) { e.EventID = "$abc:hs.test" }, "event_id"},
		{"event id with standard base64 in version 10", func(e *outbox.EventWithDeltas) { e.EventID = "$abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123+/6" }, "event_id"},
		{"room id without server", func(e *outbox.EventWithDeltas) { e.RoomID = "!room" }, "room_id"},
		{"sender with bad server", func(e *outbox.EventWithDeltas) { e.Sender = "@alice:bad_server!" }, "sender"},
		{"sender with space in localpart", func(e *outbox.EventWithDeltas) { e.Sender = "@al ice:hs.test" }, "sender"},
		{"pdu too large", func(e *outbox.EventWithDeltas) {
			e.PDU = json.RawMessage(`{"x":"` + strings.Repeat("a", outbox.MaxPDUBytes) + `"}`)
		}, "pdu"},
		{"pdu an array", func(e *outbox.EventWithDeltas) { e.PDU = json.RawMessage(`[]`) }, "pdu"},
		{"pdu sender differs", func(e *outbox.EventWithDeltas) { e.Sender = "@carol:hs.test" }, "pdu.sender"},
		{"pdu origin is not the sender's server", func(e *outbox.EventWithDeltas) {
			e.PDU = json.RawMessage(`{"origin":"other.test"}`)
		}, "pdu.origin"},
		{"delta membership unknown", func(e *outbox.EventWithDeltas) { e.Deltas[0].Membership = "joined" }, "state_deltas[0].membership"},
		{"delta of another room", func(e *outbox.EventWithDeltas) { e.Deltas[0].RoomID = "!other:hs.test" }, "state_deltas[0].room_id"},
		{"member delta with non-user state key", func(e *outbox.EventWithDeltas) { e.Deltas[0].StateKey = "bob" }, "state_deltas[0].state_key"},
		// PostgreSQL's text refuses NUL and invalid UTF-8 (SQLSTATE 22021).
		{"room id with NUL", func(e *outbox.EventWithDeltas) { e.RoomID = "!ro\x00om:hs.test" }, "room_id"},
		{"type with NUL", func(e *outbox.EventWithDeltas) { e.Type = "m.room.\x00member" }, "type"},
		{"state key with NUL", func(e *outbox.EventWithDeltas) { sk := "@bob:hs.test\x00"; e.StateKey = &sk }, "state_key"},
		{"delta type with control character", func(e *outbox.EventWithDeltas) {
			e.Deltas[0].Type, e.Deltas[0].Membership, e.Deltas[0].PrevMembership = "m.room.topic\n", "", ""
		}, "state_deltas[0].type"},
		{"delta state key with NUL", func(e *outbox.EventWithDeltas) { e.Deltas[0].StateKey = "@bob\x00:hs.test" }, "state_deltas[0].state_key"},
		{"pdu not UTF-8", func(e *outbox.EventWithDeltas) { e.PDU = json.RawMessage("{\"body\":\"\xff\"}") }, "pdu"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev := good
			ev.Deltas = append([]outbox.StateDelta(nil), good.Deltas...)
			tc.change(&ev)
			err := outbox.Validate(&ev)
			var ve *outbox.ValidationError
			switch {
			case tc.field == "" && err != nil:
				t.Fatalf("rejected: %v", err)
			case tc.field != "" && !errors.As(err, &ve):
				t.Fatalf("accepted (err %v), want an error on %s", err, tc.field)
			case tc.field != "" && ve.Field != tc.field:
				t.Fatalf("error on %q (%v), want %q", ve.Field, err, tc.field)
			}
		})
	}
}

func TestPersistInCallersTransaction(t *testing.T) {
	ctx := context.Background()
	pool := testenv.Pool(t, testenv.Database(t))
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	a := member("$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "@bob:remote.test", "join")
	b := member("$bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "@carol:remote.test", "invite")
	b.Deltas = append(b.Deltas, outbox.StateDelta{Type: "m.room.topic", StateKey: "", EventID: "", PrevEventID: hashID})

	// A rolled-back caller transaction leaves nothing behind.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Persist(ctx, tx, []outbox.EventWithDeltas{a}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	positions, err := outbox.PersistBatch(ctx, pool, []outbox.EventWithDeltas{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if len(positions) != 2 || positions[1] <= positions[0] {
		t.Fatalf("positions %v, want two increasing", positions)
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM events").Scan(&n); err != nil || n != 2 {
		t.Fatalf("events: %d, %v; want 2 (the rolled-back one absent)", n, err)
	}
	var stored, origin string
	if err := pool.QueryRow(ctx, "SELECT json, origin FROM events WHERE stream_ordering = $1", positions[0]).Scan(&stored, &origin); err != nil {
		t.Fatal(err)
	}
	if stored != string(a.PDU) || origin != "hs.test" {
		t.Fatalf("stored %s origin %q; want the PDU byte for byte and hs.test", stored, origin)
	}
	rows, err := pool.Query(ctx, `SELECT stream_id, idx, type, event_id, coalesce(prev_event_id, ''), coalesce(membership, '')
		FROM current_state_delta_stream ORDER BY stream_id, idx`)
	if err != nil {
		t.Fatal(err)
	}
	type delta struct {
		Pos                          int64
		Idx                          int
		Typ, EventID, Prev, Membship string
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[delta])
	if err != nil {
		t.Fatal(err)
	}
	want := []delta{
		{positions[0], 0, "m.room.member", a.EventID, "", "join"},
		{positions[1], 0, "m.room.member", b.EventID, "", "invite"},
		{positions[1], 1, "m.room.topic", "", hashID, ""},
	}
	if len(got) != len(want) {
		t.Fatalf("deltas %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("delta %d: %+v, want %+v", i, got[i], want[i])
		}
	}

	// A bad event anywhere rejects the whole batch with its index in the field.
	bad := member("$ccccccccccccccccccccccccccccccccccccccccccc", "@dave:remote.test", "join")
	bad.Sender = "nobody"
	_, err = outbox.PersistBatch(ctx, pool, []outbox.EventWithDeltas{member("$ddddddddddddddddddddddddddddddddddddddddddd", "@e:remote.test", "join"), bad})
	var ve *outbox.ValidationError
	if !errors.As(err, &ve) || ve.Field != "events[1].sender" {
		t.Fatalf("error %v, want a ValidationError on events[1].sender", err)
	}
}
