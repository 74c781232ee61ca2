package sender_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/testreceiver"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

// publishEDU writes one outbound EDU record for dest, as the router does.
func (e *env) publishEDU(t *testing.T, dest, eduType, key string, content json.RawMessage) {
	t.Helper()
	rec, err := schema.OutboundRecord{V: 1, Kind: schema.KindEDU, Destination: dest, EDUType: eduType, EDUKey: key, Content: content}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := schema.ValidateRecord("outbound", rec); err != nil {
		t.Fatalf("the test wrote an invalid record: %v", err)
	}
	w := &kafka.Writer{Addr: kafka.TCP(e.addr), Topic: e.k.Topic("out"), RequiredAcks: kafka.RequireAll, Balancer: &kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte(dest), Value: rec}); err != nil {
		t.Fatal(err)
	}
}

// counter sums a counter of the stage's registry over the series whose
// label has value (every series when label is ""). A metric the registry does
// not hold fails the test, so a renamed metric does not read as 0; a labelled
// counter that is registered but has no such series (never incremented)
// reads 0.
func (e *env) counter(t *testing.T, name, label, value string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	found := false
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		found = true
		for _, m := range mf.GetMetric() {
			if label == "" {
				sum += m.GetCounter().GetValue()
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	if !found && !testenv.Registered(e.reg, name) {
		t.Fatalf("metric %s is not registered", name)
	}
	return sum
}

// Keyed EDUs (typing) carry their coalescing key in the record: a
// destination that was slow gets the latest EDU per key, in the place of the
// first, and EDUs without a key as they came.
func TestKeyedEDURecordsReachASlowDestinationAsTheLatestPerKey(t *testing.T) {
	e := setup(t, "a.test")
	e.recv.SetFault("a.test", testreceiver.Fault{Delay: 2 * time.Second, Times: 1})
	e.run(t, time.Minute)
	typing := func(room, user string, on bool) json.RawMessage {
		return json.RawMessage(fmt.Sprintf(`{"room_id":%q,"typing":%t,"user_id":%q}`, room, on, user))
	}
	e.publishEDU(t, "a.test", edu.TypeTyping, "!r @u", typing("!r", "@u", true))
	testenv.Eventually(t, 30*time.Second, "the first transaction in flight", func() bool { return e.recv.Requests("a.test") == 1 })
	e.publishEDU(t, "a.test", edu.TypeTyping, "!r @u", typing("!r", "@u", true))
	e.publishEDU(t, "a.test", edu.TypeTyping, "!r @v", typing("!r", "@v", true))
	e.publishEDU(t, "a.test", edu.TypeTyping, "!r @u", typing("!r", "@u", false))
	e.publishEDU(t, "a.test", "m.other", "", json.RawMessage(`{"n":1}`))
	e.publishEDU(t, "a.test", "m.other", "", json.RawMessage(`{"n":1}`))
	testenv.Eventually(t, 30*time.Second, "all 6 records committed", func() bool { return e.committed(t) == 6 })
	var got []string
	for _, tx := range e.recv.Transactions("a.test")[1:] {
		for _, ed := range tx.EDUs {
			got = append(got, ed.Type+" "+string(ed.Content))
		}
	}
	want := []string{
		`m.typing {"room_id":"!r","typing":false,"user_id":"@u"}`,
		`m.typing {"room_id":"!r","typing":true,"user_id":"@v"}`,
		`m.other {"n":1}`,
		`m.other {"n":1}`,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("EDUs after the slow transaction\n%s\nwant\n%s", got, want)
	}
}

// m.presence EDU records (as routers wrote presence before presence
// records) are read into states at the sender, so the destination sends one
// m.presence EDU per transaction; one that breaks the specification is
// dropped and counted, not sent beside it.
func TestPresenceEDURecordsAreMergedWithPresenceStates(t *testing.T) {
	e := setup(t, "a.test")
	e.recv.SetFault("a.test", testreceiver.Fault{Delay: 2 * time.Second, Times: 1})
	e.run(t, time.Minute)
	now := time.Now().UnixMilli()
	e.publishPresence(t, "a.test", schema.PresenceState{UserID: "@x:me.test", Presence: "online", LastActiveTS: now})
	testenv.Eventually(t, 30*time.Second, "the first transaction in flight", func() bool { return e.recv.Requests("a.test") == 1 })
	e.publishPresence(t, "a.test", schema.PresenceState{UserID: "@a:me.test", Presence: "online", LastActiveTS: now})
	raw, _ := edu.Presence{Push: []edu.PresenceUpdate{edu.NewPresenceUpdate("@a:me.test", edu.Offline, 3000, false, "bye"), edu.NewPresenceUpdate("@b:me.test", edu.Online, 0, true, "")}}.EDU()
	e.publishEDU(t, "a.test", edu.TypePresence, "", raw.Content)
	e.publishEDU(t, "a.test", edu.TypePresence, "", json.RawMessage(`{"push":[{"user_id":"@c:me.test","presence":"asleep","last_active_ago":1}]}`))
	testenv.Eventually(t, 30*time.Second, "all 4 records committed", func() bool { return e.committed(t) == 4 })
	txns := e.recv.Transactions("a.test")
	if len(txns) != 2 || len(txns[1].EDUs) != 1 {
		t.Fatalf("%d transactions, the second with %d EDUs; want 2, one m.presence EDU", len(txns), len(txns[len(txns)-1].EDUs))
	}
	pushes := e.presencePushes(t, "a.test")
	a, b := pushes[1]["@a:me.test"], pushes[1]["@b:me.test"]
	if len(pushes[1]) != 2 || a["presence"] != "offline" || a["status_msg"] != "bye" || b["presence"] != "online" || b["currently_active"] != true {
		t.Fatalf("second m.presence EDU %v, want @a offline (the EDU's state, later than the record's) and @b online", pushes[1])
	}
	if n := e.counter(t, "fedpipe_sender_dropped_total", "reason", "unsendable"); n != 1 {
		t.Fatalf("%v dropped as unsendable, want 1 (the m.presence EDU with an unknown state)", n)
	}
}
