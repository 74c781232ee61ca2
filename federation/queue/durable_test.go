package queue_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/presence"
	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// storeToDevice stores to-device EDUs from..to-1 for dest, as the sender
// stage does, and tells the queue.
func (f *fixture) storeToDevice(t *testing.T, dest string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		f.store.store(queue.ToDevice, dest, queue.StoredEDU{Position: int64(i), EDU: txn.EDU{Type: edu.TypeDirectToDevice, Content: json.RawMessage(fmt.Sprintf(`{"message_id":"m%d"}`, i))}})
	}
	if err := f.m.NotifyStored(context.Background(), dest, queue.ToDevice); err != nil {
		t.Fatal(err)
	}
}

// toDeviceSent is the message ids of the to-device EDUs dest accepted, in order.
func (f *fixture) toDeviceSent(t *testing.T, dest string) []string {
	t.Helper()
	var out []string
	for _, tx := range f.txns(dest) {
		for _, e := range tx.EDUs {
			if e.Type == edu.TypeDirectToDevice {
				var c struct {
					ID string `json:"message_id"`
				}
				if err := json.Unmarshal(e.Content, &c); err != nil {
					t.Fatal(err)
				}
				out = append(out, c.ID)
			}
		}
	}
	return out
}

// To-device EDUs of a destination that fails stay in the store (nothing
// dropped) until it is due again; then the catch-up pacer wakes it with no
// new record, and it sends them all, in order, at most 90 per transaction
// (10 slots left to device lists), deleting each once accepted.
func TestToDeviceWaitsInTheStoreThroughBackoff(t *testing.T) {
	f := setupWith(t, func(c *queue.Config) { c.Owns = func(string) bool { return true } })
	f.tr.mu.Lock()
	f.tr.failing["a.test"] = errDown
	f.tr.mu.Unlock()
	f.storeToDevice(t, "a.test", 1, 151)
	testenv.Eventually(t, 5*time.Second, "a.test backing off", func() bool { return f.retry("a.test").Interval > 0 })
	f.storeToDevice(t, "a.test", 151, 201) // while it backs off
	if n := f.store.storedCount(queue.ToDevice, "a.test"); n != 200 {
		t.Fatalf("%d to-device EDUs stored, want all 200", n)
	}
	if n := f.metric(t, "fedpipe_sender_edus_dropped_total", "edu_type", edu.TypeDirectToDevice); n != 0 {
		t.Fatalf("%v to-device EDUs dropped", n)
	}
	f.tr.mu.Lock()
	delete(f.tr.failing, "a.test")
	f.tr.mu.Unlock()
	f.clk.advance(time.Hour)
	testenv.Eventually(t, 10*time.Second, "the store emptied", func() bool { return f.store.storedCount(queue.ToDevice, "a.test") == 0 })
	sent := f.toDeviceSent(t, "a.test")
	for i, id := range sent {
		if id != fmt.Sprintf("m%d", i+1) {
			t.Fatalf("sent %v, want m1…m200 in order", sent)
		}
	}
	if len(sent) != 200 {
		t.Fatalf("sent %d, want 200", len(sent))
	}
	for _, tx := range f.txns("a.test") {
		if len(tx.EDUs) > txn.MaxEDUs-10 {
			t.Fatalf("a transaction of %d to-device EDUs: 10 slots are device lists'", len(tx.EDUs))
		}
	}
	if n := f.metric(t, "fedpipe_sender_stored_edus_delivered_total", "kind", "to_device"); n != 200 {
		t.Fatalf("delivered counter %v", n)
	}
}

// A transaction takes presence first, then to-device EDUs up to 10 short of
// what is left, then the other EDUs.
func TestToDeviceSlotOrder(t *testing.T) {
	f := setup(t)
	release := f.hold(t)
	f.pdu(t, "a.test", "!r")
	f.waitInFlight(t, "a.test")
	for i := 0; i < 20; i++ {
		if err := f.m.EnqueueEDU(context.Background(), "a.test", queue.EDU{EDU: txn.EDU{Type: "m.other", Content: json.RawMessage(`{}`)}}, func() {}); err != nil {
			t.Fatal(err)
		}
	}
	f.presence(t, "a.test", presence.State{UserID: "@u:me.test", Presence: edu.Online, LastActiveTS: f.clk.Now().UnixMilli()})
	f.storeToDevice(t, "a.test", 1, 201)
	release()
	testenv.Eventually(t, 10*time.Second, "the store emptied", func() bool { return f.store.storedCount(queue.ToDevice, "a.test") == 0 })
	txns := f.txns("a.test")
	if len(txns) < 2 {
		t.Fatalf("%d transactions", len(txns))
	}
	var kinds []string
	for _, e := range txns[1].EDUs {
		if len(kinds) == 0 || kinds[len(kinds)-1] != e.Type {
			kinds = append(kinds, e.Type)
		}
	}
	count := map[string]int{}
	for _, e := range txns[1].EDUs {
		count[e.Type]++
	}
	if fmt.Sprint(kinds) != "[m.presence m.direct_to_device m.other]" || count[edu.TypeDirectToDevice] != 89 || count["m.other"] != 10 {
		t.Fatalf("second transaction holds %v in the order %v; want 1 presence, 89 to-device, 10 others", count, kinds)
	}
}

// Under a to-device storm, each transaction still carries device-list
// updates (10 slots are theirs), and keyed EDUs (typing) come after both.
func TestDeviceListsKeepTheirSlotsUnderAToDeviceStorm(t *testing.T) {
	f := setup(t)
	release := f.hold(t)
	f.pdu(t, "a.test", "!r")
	f.waitInFlight(t, "a.test")
	for i := 1; i <= 30; i++ {
		f.store.store(queue.DeviceLists, "a.test", queue.StoredEDU{Position: int64(1000 + i), EDU: txn.EDU{Type: edu.TypeDeviceListUpdate, Content: json.RawMessage(fmt.Sprintf(`{"stream_id":%d}`, 1000+i))}})
	}
	if err := f.m.NotifyStored(context.Background(), "a.test", queue.DeviceLists); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		typing := queue.EDU{EDU: txn.EDU{Type: edu.TypeTyping, Content: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))}, Key: fmt.Sprint(i)}
		if err := f.m.EnqueueEDU(context.Background(), "a.test", typing, func() {}); err != nil {
			t.Fatal(err)
		}
	}
	f.storeToDevice(t, "a.test", 1, 301)
	release()
	testenv.Eventually(t, 10*time.Second, "the store emptied", func() bool {
		return f.store.storedCount(queue.ToDevice, "a.test") == 0 && f.store.storedCount(queue.DeviceLists, "a.test") == 0
	})
	for i, tx := range f.txns("a.test")[1:] {
		count := map[string]int{}
		var order []string
		for _, e := range tx.EDUs {
			count[e.Type]++
			if len(order) == 0 || order[len(order)-1] != e.Type {
				order = append(order, e.Type)
			}
		}
		if i < 3 && (count[edu.TypeDirectToDevice] != 90 || count[edu.TypeDeviceListUpdate] != 10 || count[edu.TypeTyping] != 0) {
			t.Fatalf("transaction %d holds %v: want 90 to-device and 10 device-list updates while both are queued", i+1, count)
		}
		if want := []string{edu.TypeDirectToDevice, edu.TypeDeviceListUpdate, edu.TypeTyping}; !slices.Equal(order, slices.DeleteFunc(want, func(s string) bool { return count[s] == 0 })) {
			t.Fatalf("transaction %d in the order %v", i+1, order)
		}
	}
}

// Device-list updates are marked in the store as being sent while their
// transaction is in flight (a sender killed then leaves the mark, and the
// user's next update chains on them); a transaction the destination refuses
// clears the marks, and one it accepts acknowledges the updates. To-device
// messages carry no chain and are not marked.
func TestDeviceListUpdatesMarkedWhileInFlight(t *testing.T) {
	f := setupWith(t, func(c *queue.Config) { c.Owns = func(string) bool { return true } })
	f.tr.mu.Lock()
	f.tr.failing["a.test"] = errDown
	f.tr.mu.Unlock()
	for i := 1; i <= 3; i++ {
		f.store.store(queue.DeviceLists, "a.test", queue.StoredEDU{Position: int64(i), EDU: txn.EDU{Type: edu.TypeDeviceListUpdate, Content: json.RawMessage(fmt.Sprintf(`{"stream_id":%d}`, i))}})
	}
	if err := f.m.NotifyStored(context.Background(), "a.test", queue.DeviceLists); err != nil {
		t.Fatal(err)
	}
	f.storeToDevice(t, "a.test", 10, 12)
	testenv.Eventually(t, 5*time.Second, "a.test backing off", func() bool { return f.retry("a.test").Interval > 0 })
	if m := f.store.marked("a.test"); len(m) != 0 {
		t.Fatalf("positions %v still marked as being sent after the destination refused them", m)
	}
	release := f.hold(t)
	f.tr.mu.Lock()
	delete(f.tr.failing, "a.test")
	f.tr.mu.Unlock()
	f.clk.advance(time.Hour)
	f.waitInFlight(t, "a.test")
	if m := f.store.marked("a.test"); fmt.Sprint(m) != "[1 2 3]" {
		t.Fatalf("marked as being sent while in flight: %v, want [1 2 3] (device lists only)", m)
	}
	release()
	testenv.Eventually(t, 5*time.Second, "the store emptied", func() bool {
		return f.store.storedCount(queue.DeviceLists, "a.test") == 0 && f.store.storedCount(queue.ToDevice, "a.test") == 0
	})
}
