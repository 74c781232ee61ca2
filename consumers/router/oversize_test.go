package router_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

// sharingPartition returns n local user ids whose presence records land on
// one partition of the presence topic, so the router routes them together.
func sharingPartition(n int) []string {
	var out []string
	want := -1
	bal := &kafka.Murmur2Balancer{}
	for i := 0; len(out) < n; i++ {
		u := fmt.Sprintf("@big%d:hs.test", i)
		p := bal.Balance(kafka.Message{Key: []byte(u)}, 0, 1, 2)
		if want < 0 {
			want = p
		}
		if p == want {
			out = append(out, u)
		}
	}
	return out
}

// TestLargeStatusMessagesDoNotWedgeRouting: two users with a ~600 KB status
// message share a room with one server. Routed together, their states made one
// outbound record over Kafka's 1 MiB limit, which the writer retried forever:
// routing stopped for good. The states are split by bytes, so both arrive,
// and an event sent afterwards is still routed.
func TestLargeStatusMessagesDoNotWedgeRouting(t *testing.T) {
	e := newEnv(t)
	s := newStream()
	users := sharingPartition(2)
	const room = "!big:hs.test"
	for _, u := range users {
		join(t, s, room, u)
	}
	join(t, s, room, "@r:remote.test")
	e.publish(t, s.msgs)
	out := e.collect(t, outboundTopic, outParts)
	stop := e.runRouter(t, "oversize")
	testenv.Eventually(t, 60*time.Second, "router caught up", func() bool { return e.caughtUp(t, "oversize") && out.readAll(t, e, outParts) })
	stop() // the joins are stored; both states are then on the topic when the router reads them

	var states []schema.PresenceState
	for i, u := range users {
		msg := strings.Repeat(string(rune('a'+i)), 600<<10)
		states = append(states, schema.PresenceState{UserID: u, Presence: "online", StatusMsg: &msg, LastActiveTS: 7, CurrentlyActive: true})
	}
	e.publishPresence(t, states...)
	after := newStream()
	after.pos = s.pos
	id := after.send(t, room, users[0], "m.room.message", nil, "")
	e.publish(t, after.msgs)
	e.runRouter(t, "oversize")

	testenv.Eventually(t, 30*time.Second, "both states and the later event routed to remote.test", func() bool {
		if !out.readAll(t, e, outParts) {
			return false
		}
		sent := presenceSent(t, out)["remote.test"]
		return len(sent) == 2 && pairs(out.deliveries(t))[id+" → remote.test"] == 1
	})
	for _, m := range out.snapshot() {
		if isPresence(m) && len(m.Value) > 1<<20 {
			t.Errorf("a presence record of %d bytes reached the topic", len(m.Value))
		}
	}
}
