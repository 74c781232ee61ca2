package router_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

// The presence and room topics are consumed independently. A presence change
// written after a kick and after a join is routed against both: the kicked
// server never hears it, the newly joined one does, even when the room
// partition is far behind the presence partition (here: 20,000 room records
// stand before the kick when the router starts).
func TestPresenceIsRoutedAgainstMembershipAtLeastAsNewAsIt(t *testing.T) {
	e := newEnv(t)
	s := newStream()
	const room = "!r:hs.test"
	join(t, s, room, "@alice:hs.test")
	join(t, s, room, "@bob:kicked.test")
	join(t, s, room, "@carol:stays.test")
	e.publish(t, s.msgs)
	out := e.collect(t, outboundTopic, outParts)
	stop := e.runRouter(t, "ordering")
	testenv.Eventually(t, 60*time.Second, "the joins stored", func() bool { return e.caughtUp(t, "ordering") && out.readAll(t, e, outParts) })
	stop()
	baseline := presenceSent(t, out)

	// While the router is down: a long backlog in the room's partition (remote
	// messages, which go nowhere), then the kick and a join, then alice's
	// presence, published after them as the relay publishes.
	s.msgs = nil
	for i := range 20000 {
		s.send(t, room, "@carol:stays.test", "m.room.message", nil, fmt.Sprint(i))
	}
	s.send(t, room, "@alice:hs.test", "m.room.member", strp("@bob:kicked.test"), "leave")
	join(t, s, room, "@dan:joins.test")
	e.publish(t, s.msgs)
	e.publishPresence(t, schema.PresenceState{UserID: "@alice:hs.test", Presence: "online", LastActiveTS: 5, CurrentlyActive: true})

	e.runRouter(t, "ordering")
	testenv.Eventually(t, 120*time.Second, "alice's presence at stays.test and joins.test", func() bool {
		if !out.readAll(t, e, outParts) {
			return false
		}
		sent := presenceSent(t, out)
		return slices.Contains(minus(sent["stays.test"], baseline["stays.test"]), "@alice:hs.test=online") &&
			slices.Contains(minus(sent["joins.test"], baseline["joins.test"]), "@alice:hs.test=online")
	})
	testenv.Eventually(t, 60*time.Second, "router caught up", func() bool { return e.caughtUp(t, "ordering") && out.readAll(t, e, outParts) })
	if got := minus(presenceSent(t, out)["kicked.test"], baseline["kicked.test"]); slices.Contains(got, "@alice:hs.test=online") {
		t.Fatalf("the kicked server got alice's presence written after the kick: %v", got)
	}
}
