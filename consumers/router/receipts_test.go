package router_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

// receiptsSent counts, per destination, the receipts written for event.
func receiptsSent(t *testing.T, c *collector, event string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, m := range c.snapshot() {
		rec, err := schema.DecodeOutboundRecord(m.Value)
		if err != nil || rec.Kind != schema.KindReceipt {
			continue
		}
		if err := schema.ValidateRecord("outbound", m.Value); err != nil || string(m.Key) != rec.Destination {
			t.Fatalf("receipt record %s keyed %s: %v", m.Value, m.Key, err)
		}
		for _, r := range rec.Receipts {
			if r.EventIDs[0] == event {
				out[rec.Destination]++
			}
		}
	}
	return out
}

func (e *env) storeEvent(t *testing.T, id, room, sender string, ts int64) {
	t.Helper()
	if _, err := e.pool.Exec(context.Background(), `INSERT INTO events (event_id, room_id, room_version, sender, origin, type, json)
		VALUES ($1, $2, '10', $3, $4, 'm.room.message', $5)`, id, room, sender, mxid.ServerPart(sender), fmt.Sprintf(`{"origin_server_ts":%d}`, ts)); err != nil {
		t.Fatal(err)
	}
}

func (e *env) receipt(t *testing.T, pos int64, room, user, event string) {
	t.Helper()
	v, err := schema.ReceiptRecord{V: 1, Kind: schema.KindReceipt, Position: pos, Receipt: schema.Receipt{RoomID: room, UserID: user, EventIDs: []string{event}, TS: time.Now().UnixMilli()}}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	w := e.writer(receiptsTopic)
	defer w.Close()
	if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte(room), Value: v}); err != nil {
		t.Fatal(err)
	}
}

// A receipt goes at once to every server of a small room, and to every
// server of a large room for a recent event; for an old event in a large
// room only the event sender's server gets it at once, the others paced.
// Every server of the room gets it exactly once, no other server any.
func TestReceiptsGoAtOnceOrPaced(t *testing.T) {
	e := newEnv(t)
	s := newStream()
	join(t, s, "!big:hs.test", "@alice:hs.test")
	for i := 0; i < 12; i++ {
		join(t, s, "!big:hs.test", fmt.Sprintf("@x:s%d.test", i))
	}
	join(t, s, "!small:hs.test", "@alice:hs.test")
	join(t, s, "!small:hs.test", "@y:t0.test")
	join(t, s, "!small:hs.test", "@y:t1.test")
	e.publish(t, s.msgs)
	now := time.Now().UnixMilli()
	e.storeEvent(t, "$old", "!big:hs.test", "@x:s3.test", now-5*60_000)
	e.storeEvent(t, "$new", "!big:hs.test", "@x:s4.test", now)
	e.storeEvent(t, "$smallold", "!small:hs.test", "@y:t0.test", now-5*60_000)
	out := e.collect(t, outboundTopic, outParts)
	e.runRouter(t, "receipts")
	testenv.Eventually(t, 60*time.Second, "router caught up", func() bool { return e.caughtUp(t, "receipts") && out.readAll(t, e, outParts) })

	e.receipt(t, 100, "!small:hs.test", "@alice:hs.test", "$smallold")
	e.receipt(t, 101, "!big:hs.test", "@alice:hs.test", "$new")
	e.receipt(t, 102, "!big:hs.test", "@alice:hs.test", "$old")
	want := map[string]map[string]int{"$smallold": {}, "$new": {}, "$old": {}}
	want["$smallold"]["t0.test"], want["$smallold"]["t1.test"] = 1, 1
	for i := 0; i < 12; i++ {
		want["$new"][fmt.Sprintf("s%d.test", i)] = 1
		want["$old"][fmt.Sprintf("s%d.test", i)] = 1
	}
	t.Cleanup(func() {
		if t.Failed() {
			for ev := range want {
				t.Logf("%s sent to %v", ev, receiptsSent(t, out, ev))
			}
		}
	})
	for ev, w := range want {
		testenv.Eventually(t, 20*time.Second, "receipts for "+ev, func() bool {
			out.readAll(t, e, outParts)
			return fmt.Sprint(receiptsSent(t, out, ev)) == fmt.Sprint(w)
		})
	}
	counts := map[string]float64{}
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "fedpipe_router_receipt_records_total" {
			for _, m := range mf.GetMetric() {
				counts[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	if counts["at_once"] != 2+12+1 || counts["paced"] != 11 {
		t.Fatalf("receipt records %v: want 15 at once (the small room, the recent event, the old event's sender) and 11 paced", counts)
	}
	testenv.Eventually(t, 10*time.Second, "every receipt record committed", func() bool { return e.caughtUpOn(t, "receipts", receiptsTopic) })
}
