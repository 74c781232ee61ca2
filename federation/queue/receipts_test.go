package queue_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// receiptEDUs are the m.receipt EDUs dest accepted, per transaction.
func (f *fixture) receiptEDUs(t *testing.T, dest string) [][]edu.Receipt {
	t.Helper()
	var out [][]edu.Receipt
	for _, tx := range f.txns(dest) {
		var in []edu.Receipt
		for _, e := range tx.EDUs {
			if e.Type == edu.TypeReceipt {
				var r edu.Receipt
				if err := json.Unmarshal(e.Content, &r); err != nil {
					t.Fatal(err)
				}
				in = append(in, r)
			}
		}
		if len(in) > 0 {
			out = append(out, in)
		}
	}
	return out
}

// Receipts queued while a transaction is in flight are merged, the latest
// per (room, user, thread), into at most five m.receipt EDUs a transaction,
// a user's receipts of two threads of a room in two EDUs; every record is
// done once its receipts were sent or replaced; a destination backing off
// gets none (dropped, counted).
func TestReceiptsAreMergedPerRoomUserAndThread(t *testing.T) {
	f := setup(t)
	release := f.hold(t)
	f.pdu(t, "a.test", "!r")
	f.waitInFlight(t, "a.test")
	var done atomic.Int64
	enqueue := func(rs ...queue.Receipt) {
		t.Helper()
		if err := f.m.EnqueueReceipts(context.Background(), "a.test", rs, func() { done.Add(1) }); err != nil {
			t.Fatal(err)
		}
	}
	r := func(room, user, event, thread string) queue.Receipt {
		return queue.Receipt{RoomID: room, UserID: user, EventIDs: []string{event}, ThreadID: thread, TS: 1}
	}
	enqueue(r("!a", "@u:me.test", "$1", ""), r("!a", "@v:me.test", "$2", ""))
	enqueue(r("!a", "@u:me.test", "$3", ""))   // replaces $1
	enqueue(r("!a", "@u:me.test", "$4", "t1")) // another thread: a second EDU
	for i := 0; i < 8; i++ {                   // 8 threads of one user: EDUs 2..9
		enqueue(r("!b", "@w:me.test", fmt.Sprintf("$b%d", i), fmt.Sprintf("th%d", i)))
	}
	release()
	testenv.Eventually(t, 10*time.Second, "every receipt record done", func() bool { return f.done.Load() == 1 && done.Load() == 11 })
	got := f.receiptEDUs(t, "a.test")
	if len(got) != 2 || len(got[0]) != 5 || len(got[1]) != 3 {
		t.Fatalf("receipt EDUs per transaction: %v; want 5 then 3", got)
	}
	first := got[0][0]
	if first["!a"].Read["@u:me.test"].EventIDs[0] != "$3" || first["!a"].Read["@v:me.test"].EventIDs[0] != "$2" {
		t.Fatalf("first EDU %+v: want the latest of @u ($3) and @v's", first)
	}
	if got[0][1]["!a"].Read["@u:me.test"].Data.ThreadID != "t1" {
		t.Fatalf("second EDU %+v: want @u's receipt in thread t1", got[0][1])
	}

	f.tr.mu.Lock()
	f.tr.failing["b.test"] = errDown
	f.tr.mu.Unlock()
	f.pdu(t, "b.test", "!r")
	testenv.Eventually(t, 5*time.Second, "b.test backing off", func() bool { return f.retry("b.test").Interval > 0 })
	if err := f.m.EnqueueReceipts(context.Background(), "b.test", []queue.Receipt{r("!a", "@u:me.test", "$9", "")}, func() { done.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if done.Load() != 12 || f.metric(t, "fedpipe_sender_edus_dropped_total", "edu_type", edu.TypeReceipt) != 1 {
		t.Fatalf("a receipt for a destination backing off: done %d, dropped %v", done.Load(), f.metric(t, "fedpipe_sender_edus_dropped_total", "edu_type", edu.TypeReceipt))
	}
}
