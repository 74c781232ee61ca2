package router_test

import (
	"context"
	"maps"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

const (
	alice = "@alice:hs.test"
	bob   = "@bob:one.test"
	bob2  = "@bob2:one.test"
	carol = "@carol:two.test"
	dave  = "@dave:three.test"
	erin  = "@erin:four.test"
	zed   = "@zed:five.test"
	kim   = "@kim:five.test"
	ken   = "@ken:hs.test"
)

// scenario is two rooms interleaved on the stream, with an undecodable record
// in the middle, and the destinations each event must reach.
func scenario(t *testing.T) (*stream, map[string][]string) {
	s := newStream()
	want := map[string][]string{}
	const a, b = "!a:hs.test", "!b:hs.test"
	member := func(room, sender, target, membership string, dests ...string) {
		want[s.send(t, room, sender, "m.room.member", strp(target), membership)] = dests
	}
	msg := func(room, sender string, dests ...string) {
		want[s.send(t, room, sender, "m.room.message", nil, "")] = dests
	}
	want[s.send(t, a, alice, "m.room.create", strp(""), "")] = nil
	member(a, alice, alice, "join")
	want[s.send(t, b, alice, "m.room.create", strp(""), "")] = nil
	member(a, bob, bob, "join")     // arrives over federation: not ours to send
	member(b, alice, alice, "join") // our own server is never a destination
	member(a, carol, carol, "join")
	msg(a, alice, "one.test", "two.test")
	member(b, alice, erin, "invite") // four.test has no one in b: /invite is the homeserver's, not ours
	msg(b, alice)                    // erin is only invited
	member(a, dave, dave, "join")    // three.test joins mid-stream
	msg(a, alice, "one.test", "three.test", "two.test")
	s.msgs = append(s.msgs, kafka.Message{Key: []byte(a), Value: []byte(`{"v":1,"kind":"event",`)}) // poison
	member(a, alice, zed, "ban", "one.test", "three.test", "two.test")                              // a pre-emptive ban: five.test is in no room
	member(a, alice, carol, "leave", "one.test", "three.test", "two.test")                          // a kick reaches the kicked server
	msg(a, alice, "one.test", "three.test")                                                         // and nothing after
	member(a, alice, carol, "ban", "one.test", "three.test")                                        // nor a ban after it left
	member(b, erin, erin, "join")
	member(b, kim, kim, "knock") // a remote knock arrives over federation
	member(b, ken, ken, "knock", "four.test")
	msg(a, bob) // remote message
	member(a, bob2, bob2, "join")
	member(a, bob, bob, "leave") // one.test keeps bob2
	msg(b, alice, "four.test")
	member(a, alice, dave, "ban", "one.test", "three.test") // a ban of three.test's last user reaches it
	want[s.send(t, a, alice, "m.room.topic", strp(""), "")] = []string{"one.test"}
	msg(a, alice, "one.test")
	return s, want
}

func expectedPairs(want map[string][]string) map[string]int {
	m := map[string]int{}
	for id, dests := range want {
		for _, d := range dests {
			m[id+" → "+d]++
		}
	}
	return m
}

func TestRouterRoutesReplaysAndDeadLetters(t *testing.T) {
	e := newEnv(t)
	s, want := scenario(t)
	wantPairs := expectedPairs(want)
	out := e.collect(t, outboundTopic, outParts)
	dead := e.collect(t, deadTopic, 1)
	e.publish(t, s.msgs)

	stop := e.runRouter(t, "fedpipe-router")
	testenv.Eventually(t, 20*time.Second, "the router to handle every room record", func() bool { return e.caughtUp(t, "fedpipe-router") })
	stop()
	testenv.Eventually(t, 60*time.Second, "reading every outbound record", func() bool { return out.readAll(t, e, outParts) })
	testenv.Eventually(t, 10*time.Second, "reading the dead letter", func() bool { return dead.readAll(t, e, 1) })
	first := out.deliveries(t)
	if got := pairs(first); !maps.Equal(got, wantPairs) {
		t.Fatalf("deliveries:\n%v\nwant:\n%v", sortedKeys(got), sortedKeys(wantPairs))
	}
	checkDeliveries(t, first, s)

	deadLetters := dead.snapshot()
	if len(deadLetters) != 1 || string(deadLetters[0].Value) != `{"v":1,"kind":"event",` {
		t.Fatalf("%d dead letters, want the one undecodable record", len(deadLetters))
	}
	if h := headers(deadLetters[0]); h["source_topic"] != roomTopic || h["deadletter_reason"] == "" || string(deadLetters[0].Key) != "!a:hs.test" {
		t.Errorf("dead letter key %q headers %v", deadLetters[0].Key, h)
	}

	joined := e.members(t)
	wantJoined := []string{"!a:hs.test " + alice, "!a:hs.test " + bob2, "!b:hs.test " + alice, "!b:hs.test " + erin}
	if !slices.Equal(joined, wantJoined) {
		t.Fatalf("stored members %q, want %q", joined, wantJoined)
	}
	tables := e.dump(t)

	// Replay everything: a group without offsets starts at the beginning.
	stop = e.runRouter(t, "fedpipe-router-replay")
	testenv.Eventually(t, 20*time.Second, "the replaying group to handle every room record", func() bool { return e.caughtUp(t, "fedpipe-router-replay") })
	stop()
	testenv.Eventually(t, 60*time.Second, "reading every outbound record", func() bool { return out.readAll(t, e, outParts) })
	replayed := out.deliveries(t)[len(first):]
	if got := pairs(replayed); !maps.Equal(got, wantPairs) {
		t.Errorf("replayed deliveries:\n%v\nwant:\n%v", sortedKeys(got), sortedKeys(wantPairs))
	}
	checkDeliveries(t, replayed, s)
	if got := e.dump(t); !slices.Equal(got, tables) {
		t.Errorf("replay changed the stored membership:\n%q\nwas\n%q", got, tables)
	}
}

// checkDeliveries checks what the destination sees: the PDU bytes as
// published, and each room's events in stream order.
func checkDeliveries(t *testing.T, ds []delivery, s *stream) {
	t.Helper()
	sort.SliceStable(ds, func(i, j int) bool {
		return ds[i].partition < ds[j].partition || ds[i].partition == ds[j].partition && ds[i].offset < ds[j].offset
	})
	last := map[string]int64{}
	for _, d := range ds {
		if d.dest == ourServer {
			t.Errorf("%s sent to ourselves", d.eventID)
		}
		if d.pdu != s.pdus[d.eventID] || d.position != s.position[d.eventID] {
			t.Errorf("%s delivered as %s at %d, published %s at %d", d.eventID, d.pdu, d.position, s.pdus[d.eventID], s.position[d.eventID])
		}
		k := d.dest + " " + d.roomID
		if d.position <= last[k] {
			t.Errorf("%s: position %d after %d", k, d.position, last[k])
		}
		last[k] = d.position
	}
}

func headers(m kafka.Message) map[string]string {
	h := map[string]string{}
	for _, x := range m.Headers {
		h[x.Key] = string(x.Value)
	}
	return h
}

func sortedKeys(m map[string]int) []string {
	var ks []string
	for k, n := range m {
		for range n {
			ks = append(ks, k)
		}
	}
	slices.Sort(ks)
	return ks
}

func (e *env) members(t *testing.T) []string {
	t.Helper()
	return e.query(t, `SELECT room_id || ' ' || user_id FROM router_room_members ORDER BY 1`)
}

func (e *env) dump(t *testing.T) []string {
	t.Helper()
	return slices.Concat(
		e.query(t, `SELECT room_id || ' ' || last_position FROM router_rooms ORDER BY 1`),
		e.members(t),
		e.query(t, `SELECT room_id || ' ' || user_id || ' ' || position || ' ' || joined FROM router_membership_changes ORDER BY 1`))
}

func (e *env) query(t *testing.T, sql string) []string {
	t.Helper()
	rows, err := e.pool.Query(context.Background(), sql)
	if err != nil {
		t.Fatal(err)
	}
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
	return out
}
