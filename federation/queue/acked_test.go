package queue_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// A PDU replayed after its destination accepted its room at or past its
// position is done without being sent, also by a new owner (the accepted
// positions are read from the store); a later PDU of the room, and the same
// position in another room, are sent.
func TestReplayedPDUsTheDestinationAcceptedAreNotSentAgain(t *testing.T) {
	f := setup(t)
	var first []queue.PDU
	for i := 0; i < 3; i++ {
		p := f.pos.Add(1)
		first = append(first, queue.PDU{RoomID: "!r", EventID: fmt.Sprintf("$e%d", p), Position: p, JSON: json.RawMessage(fmt.Sprintf(`{"n":%d}`, p))})
	}
	enqueue := func(p queue.PDU) {
		t.Helper()
		if err := f.m.EnqueuePDU(context.Background(), "a.test", p, func() { f.done.Add(1) }); err != nil {
			t.Fatal(err)
		}
	}
	sent := func() int {
		n := 0
		for _, tx := range f.txns("a.test") {
			n += len(tx.PDUs)
		}
		return n
	}
	for _, p := range first {
		enqueue(p)
	}
	testenv.Eventually(t, 5*time.Second, "the first three sent", func() bool { return sent() == 3 && f.done.Load() == 3 })

	// The member stops owning a.test, and owns it again (a rebalance): the
	// router's replay brings the same three, then a new one.
	if err := f.m.Stop(context.Background(), []string{"a.test"}); err != nil {
		t.Fatal(err)
	}
	for _, p := range first {
		enqueue(p)
	}
	testenv.Eventually(t, 5*time.Second, "the replayed three done", func() bool { return f.done.Load() == 6 })
	if n := f.metric(t, "fedpipe_sender_pdus_replayed_total", "", ""); n != 3 {
		t.Fatalf("%v PDUs counted as already accepted, want 3", n)
	}
	later := first[2]
	later.Position, later.EventID = later.Position+10, "$later"
	other := first[0]
	other.RoomID = "!other"
	enqueue(later)
	enqueue(other)
	testenv.Eventually(t, 5*time.Second, "the new one and the other room's sent", func() bool { return sent() == 5 && f.done.Load() == 8 })
}
