package queue_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// EDUs whose bodies together pass the transaction budget go in the next
// transaction, not to the floor.
func TestWhatDoesNotFitATransactionGoesInTheNext(t *testing.T) {
	f := setup(t)
	release := f.hold(t)
	f.pdu(t, "a.test", "!r")
	f.waitInFlight(t, "a.test")
	big := json.RawMessage(`{"pad":"` + strings.Repeat("x", 400_000) + `"}`) // two fit in the default 1 MiB budget, three do not
	for i := 0; i < 3; i++ {
		if err := f.m.EnqueueEDU(context.Background(), "a.test", queue.EDU{EDU: txn.EDU{Type: "m.big", Content: big}}, func() { f.done.Add(1) }); err != nil {
			t.Fatal(err)
		}
	}
	release()
	testenv.Eventually(t, 20*time.Second, "all done", func() bool { return f.done.Load() == 4 })
	var sizes []int
	for _, tx := range f.txns("a.test") {
		sizes = append(sizes, len(tx.EDUs))
	}
	if n := f.metric(t, "fedpipe_sender_dropped_total", "", ""); n != 0 {
		t.Fatalf("%v items dropped, want none", n)
	}
	if len(sizes) != 3 || sizes[1]+sizes[2] != 3 || sizes[2] == 0 {
		t.Fatalf("EDUs per transaction %v, want [0 2 1]: the third in a transaction of its own", sizes)
	}
}
