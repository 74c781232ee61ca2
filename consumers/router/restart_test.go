package router_test

import (
	"slices"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/testing/loadgen"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

// planRecords turns a generated workload into room records: position Seq+1,
// the event, then its deltas. The plan's destinations come from loadgen's own
// membership model, not from the router's rules.
func planRecords(t testing.TB, p *loadgen.Plan) []kafka.Message {
	t.Helper()
	var msgs []kafka.Message
	add := func(room string, rec schema.RoomRecord) {
		v, err := rec.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, kafka.Message{Key: []byte(room), Value: v})
	}
	for _, ev := range p.Events {
		pos := int64(ev.Seq + 1)
		add(ev.RoomID, schema.RoomRecord{V: 1, Kind: schema.KindEvent, Position: pos, RoomID: ev.RoomID, RoomVersion: ev.RoomVersion,
			EventID: ev.EventID, Sender: ev.Sender, Origin: ev.Origin, Type: ev.Type, StateKey: ev.StateKey, PDU: ev.PDU})
		for _, d := range ev.Deltas {
			add(ev.RoomID, schema.RoomRecord{V: 1, Kind: schema.KindStateDelta, Position: pos, RoomID: ev.RoomID, Type: d.Type,
				StateKey: &d.StateKey, EventID: d.EventID, PrevEventID: d.PrevEventID, Membership: d.Membership, PrevMembership: d.PrevMembership})
		}
	}
	return msgs
}

func TestRouterRestartMidStreamLosesNothing(t *testing.T) {
	e := newEnv(t)
	plan, err := loadgen.Generate(loadgen.Config{LocalServer: ourServer, RemoteServers: []string{"one.test", "two.test", "three.test", "four.test", "five.test"},
		Rooms: 8, Events: 1500, ServersPerRoom: 3, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{}
	for _, ev := range plan.Events {
		for _, d := range ev.Destinations {
			want[ev.EventID+" → "+d] = 1
		}
	}
	msgs := planRecords(t, plan)
	out := e.collect(t, outboundTopic, outParts)
	half := len(msgs) / 2
	e.publish(t, msgs[:half])
	stop := e.runRouter(t, "fedpipe-router")
	testenv.Eventually(t, 20*time.Second, "the first deliveries", func() bool { return out.count() > 0 })
	stop() // mid-stream, most likely with records in flight
	e.publish(t, msgs[half:])
	stop = e.runRouter(t, "fedpipe-router")
	testenv.Eventually(t, 30*time.Second, "the restarted router to handle every room record", func() bool { return e.caughtUp(t, "fedpipe-router") })
	stop()
	testenv.Eventually(t, 60*time.Second, "reading every outbound record", func() bool { return out.readAll(t, e, outParts) })

	got := pairs(out.deliveries(t))
	var missing, unexpected []string
	dups := 0
	for k := range want {
		if got[k] == 0 {
			missing = append(missing, k)
		}
	}
	for k, n := range got {
		if want[k] == 0 {
			unexpected = append(unexpected, k)
		}
		dups += n - 1
	}
	slices.Sort(missing)
	slices.Sort(unexpected)
	if len(missing) > 0 || len(unexpected) > 0 {
		t.Fatalf("%d of %d deliveries missing (%q…), %d unexpected (%q…)", len(missing), len(want), missing[:min(5, len(missing))],
			len(unexpected), unexpected[:min(5, len(unexpected))])
	}
	t.Logf("%d deliveries, %d duplicates after the restart", len(want), dups)
}
