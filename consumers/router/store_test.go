package router

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

func storeEnv(t *testing.T) (*pgxpool.Pool, store) {
	t.Helper()
	pool := testenv.Pool(t, testenv.Database(t))
	if err := schema.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	return pool, store{pool}
}

// stored is the router's tables, a line per row, sorted.
type stored struct{ rooms, members, history []string }

func readStored(t *testing.T, pool *pgxpool.Pool) stored {
	t.Helper()
	q := func(sql string) []string {
		rows, err := pool.Query(context.Background(), sql)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			out = append(out, s)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		slices.Sort(out)
		return out
	}
	return stored{
		rooms:   q(`SELECT room_id || ' ' || last_position FROM router_rooms`),
		members: q(`SELECT room_id || ' ' || user_id FROM router_room_members`),
		history: q(`SELECT room_id || ' ' || user_id || ' ' || position || ' ' || joined FROM router_membership_changes`),
	}
}

// model is what storing changes one at a time, in order, leaves: each
// history row as its last change says, each user joined as their last change
// says, and each room at the greatest position seen.
type model struct {
	rooms   map[string]int64
	members map[[2]string]bool
	history map[string]bool
}

func newModel() *model {
	return &model{rooms: map[string]int64{}, members: map[[2]string]bool{}, history: map[string]bool{}}
}

func (m *model) apply(changes ...change) {
	for _, c := range changes {
		m.history[fmt.Sprintf("%s %s %d", c.roomID, c.userID, c.position)] = c.joined
		m.members[[2]string{c.roomID, c.userID}] = c.joined
		if last, ok := m.rooms[c.roomID]; !ok || c.position > last {
			m.rooms[c.roomID] = c.position
		}
	}
}

func (m *model) stored() stored {
	var s stored
	for r, p := range m.rooms {
		s.rooms = append(s.rooms, fmt.Sprintf("%s %d", r, p))
	}
	for k, joined := range m.members {
		if joined {
			s.members = append(s.members, k[0]+" "+k[1])
		}
	}
	for k, joined := range m.history {
		s.history = append(s.history, fmt.Sprintf("%s %t", k, joined))
	}
	slices.Sort(s.rooms)
	slices.Sort(s.members)
	slices.Sort(s.history)
	return s
}

func checkStored(t *testing.T, got, want stored) {
	t.Helper()
	for _, c := range []struct {
		table     string
		got, want []string
	}{{"router_rooms", got.rooms, want.rooms}, {"router_room_members", got.members, want.members}, {"router_membership_changes", got.history, want.history}} {
		if !slices.Equal(c.got, c.want) {
			t.Errorf("%s holds\n  %s\nwant\n  %s", c.table, strings.Join(c.got, "\n  "), strings.Join(c.want, "\n  "))
		}
	}
}

// A batch's changes are stored as if one at a time in batch order, though a
// batch is stored with one statement per table: a user who joins, leaves and
// joins again ends joined with three history rows; the last of two changes
// at one position is kept; the last change of a user in batch order decides
// their membership even when an earlier one has a higher position; a room's
// stored position never moves backwards.
func TestSaveStoresABatchAsIfChangeByChange(t *testing.T) {
	pool, st := storeEnv(t)
	ctx := context.Background()
	m := newModel()
	before := []change{
		{roomID: "!a:hs.test", userID: "@old:one.test", position: 100, joined: true},
		{roomID: "!b:hs.test", userID: "@gone:one.test", position: 3, joined: true},
	}
	if err := st.save(ctx, before...); err != nil {
		t.Fatal(err)
	}
	m.apply(before...)
	batch := []change{
		{roomID: "!a:hs.test", userID: "@u:one.test", position: 5, joined: true},
		{roomID: "!b:hs.test", userID: "@w:two.test", position: 10, joined: true},
		{roomID: "!a:hs.test", userID: "@u:one.test", position: 6, joined: false},
		{roomID: "!a:hs.test", userID: "@v:one.test", position: 8, joined: true},
		{roomID: "!b:hs.test", userID: "@gone:one.test", position: 11, joined: false},
		{roomID: "!a:hs.test", userID: "@u:one.test", position: 7, joined: true},
		{roomID: "!a:hs.test", userID: "@v:one.test", position: 9, joined: false},
		{roomID: "!b:hs.test", userID: "@w:two.test", position: 10, joined: false}, // the same position again: the last wins
		{roomID: "!c:hs.test", userID: "@x:two.test", position: 20, joined: true},
		{roomID: "!c:hs.test", userID: "@x:two.test", position: 15, joined: false}, // last in batch order, not by position
		{roomID: "!b:hs.test", userID: "@w2:two.test", position: 12, joined: true},
		{roomID: "!b:hs.test", userID: "@w2:two.test", position: 13, joined: true}, // joined twice
	}
	if err := st.save(ctx, batch...); err != nil {
		t.Fatal(err)
	}
	m.apply(batch...)
	got := readStored(t, pool)
	checkStored(t, got, m.stored())
	// The model itself, spelled out for the cases above.
	checkStored(t, got, stored{
		rooms:   []string{"!a:hs.test 100", "!b:hs.test 13", "!c:hs.test 20"},
		members: []string{"!a:hs.test @old:one.test", "!a:hs.test @u:one.test", "!b:hs.test @w2:two.test"},
		history: []string{
			"!a:hs.test @old:one.test 100 true",
			"!a:hs.test @u:one.test 5 true", "!a:hs.test @u:one.test 6 false", "!a:hs.test @u:one.test 7 true",
			"!a:hs.test @v:one.test 8 true", "!a:hs.test @v:one.test 9 false",
			"!b:hs.test @gone:one.test 11 false", "!b:hs.test @gone:one.test 3 true",
			"!b:hs.test @w2:two.test 12 true", "!b:hs.test @w2:two.test 13 true",
			"!b:hs.test @w:two.test 10 false",
			"!c:hs.test @x:two.test 15 false", "!c:hs.test @x:two.test 20 true",
		},
	})
}

// Random batches over few rooms and users, so that every key recurs within
// a batch and across batches, some positions repeat and go backwards: the
// tables end as storing each change alone, in order, leaves them.
func TestSaveOfRandomBatchesMatchesChangeByChange(t *testing.T) {
	pool, st := storeEnv(t)
	ctx := context.Background()
	m := newModel()
	rng := rand.New(rand.NewPCG(18, 5))
	for batch := range 6 {
		var changes []change
		for range 1 + rng.IntN(400) {
			changes = append(changes, change{roomID: fmt.Sprintf("!r%d:hs.test", rng.IntN(4)), userID: fmt.Sprintf("@u%d:s%d.test", rng.IntN(5), rng.IntN(2)),
				position: int64(batch*40 + rng.IntN(60)), joined: rng.IntN(2) == 0})
		}
		if err := st.save(ctx, changes...); err != nil {
			t.Fatalf("batch %d: %v", batch, err)
		}
		m.apply(changes...)
		checkStored(t, readStored(t, pool), m.stored())
		if t.Failed() {
			t.Fatalf("after batch %d", batch)
		}
	}
}

// The presence look-ups of a batch's joins each get what they would alone,
// run after all the batch's changes are stored: a remote server's join gets
// the room's local users with presence at the end of the batch, without a
// local user who left later in the batch and without those it shares another
// room with; a local user's join gets the user's own presence.
func TestLookUpsOfABatchsJoinsSeeTheWholeBatch(t *testing.T) {
	pool, st := storeEnv(t)
	ctx := context.Background()
	for i, u := range []string{"@on:hs.test", "@idle:hs.test", "@leaver:hs.test", "@new:hs.test", "@elsewhere:hs.test"} {
		if _, err := pool.Exec(ctx, `INSERT INTO presence_stream (stream_id, user_id, state, last_active_ts, currently_active) VALUES ($1, $2, $3, $4, false)`,
			i+1, u, "online", int64(10+i)); err != nil {
			t.Fatal(err)
		}
	}
	const r, other, third = "!r:hs.test", "!other:hs.test", "!third:hs.test"
	var pos int64
	ch := func(room, user string, joined bool) change {
		pos++
		return change{roomID: room, userID: user, position: pos, joined: joined}
	}
	if err := st.save(ctx,
		ch(r, "@on:hs.test", true), ch(r, "@idle:hs.test", true), ch(r, "@leaver:hs.test", true), ch(r, "@x:a.test", true),
		ch(other, "@on:hs.test", true), ch(other, "@y:b.test", true),
		ch(third, "@elsewhere:hs.test", true)); err != nil {
		t.Fatal(err)
	}
	batch := []change{
		ch(r, "@z:c.test", true),
		ch(r, "@y:b.test", true),
		ch(third, "@q:d.test", true),
		ch(r, "@leaver:hs.test", false),
		ch(r, "@new:hs.test", true),
		ch(r, "@nopresence:hs.test", true),
	}
	server := func(c change, srv string) *joinPresence {
		return &joinPresence{rec: schema.RoomRecord{RoomID: c.roomID, Position: c.position, StateKey: &c.userID}, server: srv, locals: map[string]bool{"@on:hs.test": true}}
	}
	local := func(c change) *joinPresence {
		return &joinPresence{rec: schema.RoomRecord{RoomID: c.roomID, Position: c.position, StateKey: &c.userID}, server: "hs.test", dests: []string{"a.test"}}
	}
	joins := []*joinPresence{server(batch[0], "c.test"), server(batch[1], "b.test"), server(batch[2], "d.test"), local(batch[4]), local(batch[5])}
	if err := st.saveAndLookUp(ctx, batch, joins, "hs.test"); err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"@idle:hs.test", "@new:hs.test", "@on:hs.test"}, // c.test: not @leaver, who left later; @nopresence has none
		{"@idle:hs.test", "@new:hs.test"},                // b.test already shares !other with @on
		{"@elsewhere:hs.test"},
		{"@new:hs.test"},
		nil, // no presence published
	}
	for i, j := range joins {
		var got []string
		for _, s := range j.states {
			got = append(got, s.UserID)
			if s.Presence != "online" || s.LastActiveTS < 10 || s.CurrentlyActive {
				t.Errorf("join %d: state %+v is not the stored one", i, s)
			}
		}
		if !slices.Equal(got, want[i]) {
			t.Errorf("join %d (%s of %s) found %v, want %v", i, *j.rec.StateKey, j.rec.RoomID, got, want[i])
		}
	}
}

// PostgreSQL refuses a NUL byte in text (SQLSTATE 22021). A batch holding one
// fails as poison (runtime.IsPoison), so runtime.Batch stores its records one
// at a time and dead-letters only the bad one, and it stores nothing: the
// others then store alone. Records are checked for NUL when decoded, so this
// is the store's own guard.
func TestNULInABatchIsPoisonAndStoresNothing(t *testing.T) {
	pool, st := storeEnv(t)
	ctx := context.Background()
	good := []change{
		{roomID: "!a:hs.test", userID: "@u:one.test", position: 1, joined: true},
		{roomID: "!a:hs.test", userID: "@v:one.test", position: 2, joined: true},
	}
	for _, c := range []struct {
		name string
		save func() error
	}{
		{"a user id", func() error {
			return st.save(ctx, good[0], change{roomID: "!a:hs.test", userID: "@n\x00ul:one.test", position: 3, joined: true}, good[1])
		}},
		{"a room id", func() error {
			return st.save(ctx, good[0], change{roomID: "!a\x00:hs.test", userID: "@w:one.test", position: 3, joined: false}, good[1])
		}},
		{"a join's room", func() error {
			bad := "@j:c.test"
			return st.saveAndLookUp(ctx, good, []*joinPresence{{rec: schema.RoomRecord{RoomID: "!a\x00:hs.test", StateKey: &bad}, server: "c.test", locals: map[string]bool{}}}, "hs.test")
		}},
		{"a local join's user", func() error {
			bad := "@j\x00:hs.test"
			return st.saveAndLookUp(ctx, good, []*joinPresence{{rec: schema.RoomRecord{RoomID: "!a:hs.test", StateKey: &bad}, server: "hs.test"}}, "hs.test")
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.save()
			if !runtime.IsPoison(err) {
				t.Fatalf("got %v, want a poison error", err)
			}
			if got := readStored(t, pool); len(got.rooms)+len(got.members)+len(got.history) != 0 {
				t.Fatalf("a failed batch stored %+v", got)
			}
		})
	}
	if err := st.save(ctx, good...); err != nil {
		t.Fatal(err)
	}
	m := newModel()
	m.apply(good...)
	checkStored(t, readStored(t, pool), m.stored())
}
