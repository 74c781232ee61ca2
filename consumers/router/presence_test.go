package router_test

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

func isPresence(m kafka.Message) bool {
	for _, h := range m.Headers {
		if h.Key == schema.HeaderKind {
			return string(h.Value) == schema.KindPresence
		}
	}
	return false
}

// presenceSent is every (destination, user, presence) the router wrote so far.
func presenceSent(t *testing.T, c *collector) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, m := range c.snapshot() {
		if !isPresence(m) {
			continue
		}
		if err := schema.ValidateRecord("outbound", m.Value); err != nil {
			t.Fatalf("outbound presence record breaks its schema: %v\n%s", err, m.Value)
		}
		rec, err := schema.DecodeOutboundRecord(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Key) != rec.Destination {
			t.Fatalf("presence record keyed %q for %q", m.Key, rec.Destination)
		}
		for _, s := range rec.Presence {
			out[rec.Destination] = append(out[rec.Destination], s.UserID+"="+s.Presence)
		}
	}
	for _, v := range out {
		sort.Strings(v)
	}
	return out
}

// minus is what a holds beyond b (both sorted), sorted.
func minus(a, b []string) []string {
	left := map[string]int{}
	for _, x := range b {
		left[x]++
	}
	var out []string
	for _, x := range a {
		if left[x] > 0 {
			left[x]--
			continue
		}
		out = append(out, x)
	}
	return out
}

// setPresence writes users' presence_stream rows as the presence stage does.
func (e *env) setPresence(t *testing.T, states ...schema.PresenceState) {
	t.Helper()
	for _, s := range states {
		if _, err := e.pool.Exec(context.Background(), `INSERT INTO presence_stream (stream_id, user_id, state, status_msg, last_active_ts, currently_active)
			VALUES (fedpipe_next_stream_ordering(), $1, $2, $3, $4, $5)
			ON CONFLICT (user_id) DO UPDATE SET stream_id = EXCLUDED.stream_id, state = EXCLUDED.state, status_msg = EXCLUDED.status_msg,
				last_active_ts = EXCLUDED.last_active_ts, currently_active = EXCLUDED.currently_active`,
			s.UserID, s.Presence, s.StatusMsg, s.LastActiveTS, s.CurrentlyActive); err != nil {
			t.Fatal(err)
		}
	}
}

// publishPresence writes presence records as the relay does.
func (e *env) publishPresence(t *testing.T, states ...schema.PresenceState) {
	t.Helper()
	w := e.writer(presenceTopic)
	defer w.Close()
	var msgs []kafka.Message
	for i, s := range states {
		v, err := schema.PresenceRecord{V: 1, Kind: schema.KindPresence, Position: int64(1000 + i), PresenceState: s}.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, kafka.Message{Key: []byte(s.UserID), Value: v})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
}

func join(t *testing.T, s *stream, room, user string) {
	s.send(t, room, user, "m.room.member", strp(user), "join")
}

func TestJoinsTellNewServersCurrentPresenceWithoutStaleStates(t *testing.T) {
	e := newEnv(t)
	now := time.Now().UnixMilli()
	eightDays := now - (8 * 24 * time.Hour).Milliseconds()
	msg := "on holiday"
	e.setPresence(t,
		schema.PresenceState{UserID: "@on:hs.test", Presence: "online", LastActiveTS: now, CurrentlyActive: true},
		schema.PresenceState{UserID: "@idle:hs.test", Presence: "unavailable", LastActiveTS: now - 600_000},
		schema.PresenceState{UserID: "@gone:hs.test", Presence: "offline", LastActiveTS: eightDays},
		schema.PresenceState{UserID: "@away:hs.test", Presence: "offline", LastActiveTS: eightDays, StatusMsg: &msg},
		schema.PresenceState{UserID: "@new:hs.test", Presence: "online", LastActiveTS: now, CurrentlyActive: true},
	)
	s := newStream()
	// !r holds the four local users and a.test; !other already shares @on
	// with b.test.
	for _, u := range []string{"@on:hs.test", "@idle:hs.test", "@gone:hs.test", "@away:hs.test", "@x:a.test"} {
		join(t, s, "!r:hs.test", u)
	}
	join(t, s, "!other:hs.test", "@on:hs.test")
	join(t, s, "!other:hs.test", "@y:b.test")
	e.publish(t, s.msgs)
	out := e.collect(t, outboundTopic, outParts)
	e.runRouter(t, "presence-joins")
	// Up to here: every server that joined gained the room's earlier users'
	// presence. Start counting from now.
	testenv.Eventually(t, 60*time.Second, "router caught up", func() bool { return e.caughtUp(t, "presence-joins") && out.readAll(t, e, outParts) })
	before := presenceSent(t, out)

	// c.test and b.test join !r; a.test, already there, gains nothing.
	s.msgs = nil
	join(t, s, "!r:hs.test", "@z:c.test")
	join(t, s, "!r:hs.test", "@y:b.test")
	join(t, s, "!r:hs.test", "@x2:a.test")
	e.publish(t, s.msgs)
	testenv.Eventually(t, 60*time.Second, "router caught up", func() bool { return e.caughtUp(t, "presence-joins") && out.readAll(t, e, outParts) })
	after := presenceSent(t, out)
	gained := func(dest string) []string { return minus(after[dest], before[dest]) }
	if got, want := gained("c.test"), []string{"@away:hs.test=offline", "@idle:hs.test=unavailable", "@on:hs.test=online"}; !slices.Equal(got, want) {
		t.Errorf("c.test, newly joined, got %v, want %v", got, want)
	}
	// b.test shares !other with @on already: it has @on's presence.
	if got, want := gained("b.test"), []string{"@away:hs.test=offline", "@idle:hs.test=unavailable"}; !slices.Equal(got, want) {
		t.Errorf("b.test, newly joined, got %v, want %v", got, want)
	}
	if got := gained("a.test"); len(got) != 0 {
		t.Errorf("a.test, joined before, got %v", got)
	}

	// A local user joins: every remote server in the room gets their presence.
	s.msgs = nil
	join(t, s, "!r:hs.test", "@new:hs.test")
	e.publish(t, s.msgs)
	testenv.Eventually(t, 60*time.Second, "router caught up", func() bool { return e.caughtUp(t, "presence-joins") && out.readAll(t, e, outParts) })
	final := presenceSent(t, out)
	for _, d := range []string{"a.test", "b.test", "c.test"} {
		if got := minus(final[d], after[d]); !slices.Equal(got, []string{"@new:hs.test=online"}) {
			t.Errorf("%s after @new joined: %v", d, got)
		}
	}
}

func TestPresenceReachesEachServerSharingARoomOnce(t *testing.T) {
	e := newEnv(t)
	s := newStream()
	servers := []string{"s1.test", "s2.test", "s3.test", "s4.test", "s5.test"}
	for i := range 30 {
		room := fmt.Sprintf("!room%d:hs.test", i)
		join(t, s, room, "@alice:hs.test")
		join(t, s, room, "@bob:hs.test")
		for j, srv := range servers {
			if (i+j)%2 == 0 || i < 5 { // each server in many of the rooms
				join(t, s, room, fmt.Sprintf("@u%d:%s", i, srv))
			}
		}
	}
	join(t, s, "!elsewhere:hs.test", "@bob:hs.test")
	join(t, s, "!elsewhere:hs.test", "@z:other.test") // not alice's: gets nothing of hers
	e.publish(t, s.msgs)
	out := e.collect(t, outboundTopic, outParts)
	e.runRouter(t, "presence-fanout")
	testenv.Eventually(t, 60*time.Second, "router caught up", func() bool { return e.caughtUp(t, "presence-fanout") && out.readAll(t, e, outParts) })
	if sent := presenceSent(t, out); len(sent) != 0 {
		t.Fatalf("presence sent before anyone had presence: %v", sent)
	}
	e.publishPresence(t,
		schema.PresenceState{UserID: "@alice:hs.test", Presence: "unavailable", LastActiveTS: 5},
		schema.PresenceState{UserID: "@carol:remote.test", Presence: "online", LastActiveTS: 5}) // not ours to send
	testenv.Eventually(t, 60*time.Second, "alice's presence routed", func() bool {
		return out.readAll(t, e, outParts) && len(presenceSent(t, out)) == len(servers)
	})
	// Once the group has committed past the presence records, every outbound
	// record made of them was acknowledged: reading to the ends sees them all.
	testenv.Eventually(t, 30*time.Second, "the presence records committed and the outbound topic read to its ends", func() bool {
		return e.caughtUpOn(t, "presence-fanout", presenceTopic) && out.readAll(t, e, outParts)
	})
	sent := presenceSent(t, out)
	for _, srv := range servers {
		if got := sent[srv]; !slices.Equal(got, []string{"@alice:hs.test=unavailable"}) {
			t.Errorf("%s got %v, want alice's presence once", srv, got)
		}
	}
	if len(sent) != len(servers) {
		t.Errorf("presence went to %v", strings.Join(slices.Sorted(func(yield func(string) bool) {
			for k := range sent {
				if !yield(k) {
					return
				}
			}
		}), ","))
	}
}

// TestPresenceChangesArrivingTogetherAreRoutedTogether: a burst of many users'
// changes becomes few outbound records per server, each user's state in one.
func TestPresenceChangesArrivingTogetherAreRoutedTogether(t *testing.T) {
	e := newEnv(t)
	s := newStream()
	const users = 300
	var states []schema.PresenceState
	for i := range users {
		u := fmt.Sprintf("@u%d:hs.test", i)
		join(t, s, fmt.Sprintf("!room%d:hs.test", i%10), u)
		states = append(states, schema.PresenceState{UserID: u, Presence: "online", LastActiveTS: 9, CurrentlyActive: true})
	}
	for i := range 10 {
		join(t, s, fmt.Sprintf("!room%d:hs.test", i), "@a:s1.test")
		if i%2 == 0 {
			join(t, s, fmt.Sprintf("!room%d:hs.test", i), "@b:s2.test")
		}
	}
	e.publish(t, s.msgs)
	out := e.collect(t, outboundTopic, outParts)
	e.runRouter(t, "presence-batch")
	testenv.Eventually(t, 60*time.Second, "router caught up", func() bool { return e.caughtUp(t, "presence-batch") && out.readAll(t, e, outParts) })
	e.publishPresence(t, states...)
	testenv.Eventually(t, 60*time.Second, "presence routed", func() bool {
		out.readAll(t, e, outParts)
		sent := presenceSent(t, out)
		return len(sent["s1.test"]) == users && len(sent["s2.test"]) == users/2
	})
	records := map[string]int{}
	for _, m := range out.snapshot() {
		if isPresence(m) {
			records[string(m.Key)]++
		}
	}
	// The bound, from the router's batching rule (presence.go, runtime.Batch):
	// a presence partition's records are kept and routed together until the
	// last record the partition held when it was fetched (its high-water
	// mark) or 1,000 are kept, and each routing (a flush) gives a destination
	// one outbound record per run of at most 200 states (maxStatesPerRecord;
	// these states are far below the byte bound). publishPresence writes the
	// 300 records in one WriteMessages call whose writer (e.writer) puts up
	// to BatchSize 1,000 records of a partition in one produce request, so
	// each presence partition's records are appended at once: every fetch
	// sees its high-water mark at or past their end, and the partition is
	// flushed once. Over F flushes holding k_f of a destination's n users,
	// it gets sum ceil(k_f/200) <= F + floor(n/200) records: at most
	// partitions + 1 for s1.test (300 users), partitions for s2.test (150).
	// Without batching it would be one record per change: 300 and 150.
	const statesPerRecord = 200 // the router's maxStatesPerRecord
	parts := partitionCount(t, e.addr, presenceTopic)
	for d, n := range map[string]int{"s1.test": users, "s2.test": users / 2} {
		limit := parts + n/statesPerRecord
		if records[d] > limit || records[d] < (n+statesPerRecord-1)/statesPerRecord {
			t.Errorf("%d presence changes of %d users in %s's rooms became %d outbound records to it, want at most %d (%d partitions flushed once each, runs of %d states)",
				users, n, d, records[d], limit, parts, statesPerRecord)
		}
	}
	t.Logf("%d presence changes: outbound records per server %v", users, records)
}

// partitionCount is the number of partitions of topic.
func partitionCount(t *testing.T, addr, topic string) int {
	t.Helper()
	conn, err := kafka.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions(topic)
	if err != nil {
		t.Fatal(err)
	}
	return len(parts)
}

// storeJoins writes joins as a router stores them (store.save) before the
// broker has taken what they route: the state a crash leaves behind.
func (e *env) storeJoins(t *testing.T, room string, users []string, positions []int64) {
	t.Helper()
	ctx := context.Background()
	for i, u := range users {
		if _, err := e.pool.Exec(ctx, `INSERT INTO router_membership_changes (room_id, user_id, position, joined) VALUES ($1, $2, $3, true)`, room, u, positions[i]); err != nil {
			t.Fatal(err)
		}
		if _, err := e.pool.Exec(ctx, `INSERT INTO router_room_members (room_id, user_id) VALUES ($1, $2)`, room, u); err != nil {
			t.Fatal(err)
		}
		if _, err := e.pool.Exec(ctx, `UPDATE router_rooms SET last_position = $2 WHERE room_id = $1`, room, positions[i]); err != nil {
			t.Fatal(err)
		}
	}
}

// TestJoinsStoredBeforeACrashStillTellPresence: a router member stores two
// joins (a remote server's and a local user's) and stops before the broker
// takes their presence records or the group commits their offsets. The member
// that takes the partition over reads the joins again, finds them stored, and
// still tells the servers what the joins owed them.
func TestJoinsStoredBeforeACrashStillTellPresence(t *testing.T) {
	e := newEnv(t)
	now := time.Now().UnixMilli()
	e.setPresence(t,
		schema.PresenceState{UserID: "@on:hs.test", Presence: "online", LastActiveTS: now, CurrentlyActive: true},
		schema.PresenceState{UserID: "@idle:hs.test", Presence: "unavailable", LastActiveTS: now - 600_000},
		schema.PresenceState{UserID: "@new:hs.test", Presence: "online", LastActiveTS: now, CurrentlyActive: true},
	)
	s := newStream()
	for _, u := range []string{"@on:hs.test", "@idle:hs.test", "@x:a.test"} {
		join(t, s, "!r:hs.test", u)
	}
	e.publish(t, s.msgs)
	out := e.collect(t, outboundTopic, outParts)
	stop := e.runRouter(t, "presence-crash")
	testenv.Eventually(t, 60*time.Second, "router caught up", func() bool { return e.caughtUp(t, "presence-crash") && out.readAll(t, e, outParts) })
	stop()
	before := presenceSent(t, out)

	s.msgs = nil
	join(t, s, "!r:hs.test", "@z:c.test")
	join(t, s, "!r:hs.test", "@new:hs.test")
	e.storeJoins(t, "!r:hs.test", []string{"@z:c.test", "@new:hs.test"}, []int64{s.pos - 1, s.pos})
	e.publish(t, s.msgs)

	e.runRouter(t, "presence-crash")
	testenv.Eventually(t, 60*time.Second, "the next router caught up", func() bool {
		return e.caughtUp(t, "presence-crash") && out.readAll(t, e, outParts)
	})
	after := presenceSent(t, out)
	gained := func(dest string) []string { return minus(after[dest], before[dest]) }
	// c.test joined first and hears of @new when @new joins after it.
	if got, want := gained("c.test"), []string{"@idle:hs.test=unavailable", "@new:hs.test=online", "@on:hs.test=online"}; !slices.Equal(got, want) {
		t.Errorf("c.test, whose join was stored before the crash, got %v, want %v", got, want)
	}
	if got, want := gained("a.test"), []string{"@new:hs.test=online"}; !slices.Equal(got, want) {
		t.Errorf("a.test got %v, want %v", got, want)
	}
}
