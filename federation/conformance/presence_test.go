package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/presence"
	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// capture is a Transport that keeps the transactions the queue builds.
type capture struct {
	mu  sync.Mutex
	got []*txn.Transaction
}

func (c *capture) SendTransaction(_ context.Context, t *txn.Transaction) (txn.Response, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, t)
	return txn.Response{}, nil
}

func (c *capture) txns() []*txn.Transaction {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*txn.Transaction(nil), c.got...)
}

// healthyStore is a Store for a destination that never backs off: only what a
// successful live send reads is implemented.
type healthyStore struct{ queue.Store }

func (healthyStore) LoadRetry(context.Context, string) (queue.RetryState, error) {
	return queue.RetryState{}, nil
}
func (healthyStore) RecordSuccess(context.Context, string, []queue.RoomPosition) error { return nil }
func (healthyStore) AckedRooms(context.Context, string) (map[string]int64, error)      { return nil, nil }
func (healthyStore) StoredEDUs(context.Context, string, queue.Durable, int64, int, int) ([]queue.StoredEDU, error) {
	return nil, nil
}
func (healthyStore) DueDestinations(context.Context, time.Time, string, int) ([]string, error) {
	return nil, nil
}

// TestTransactionsWithTheQueuesPresenceMatchTheSchema runs the destination
// queue as the sender does and validates the transactions it builds from
// presence states (every state, with and without status and activity, more
// users than fit one EDU) against the specification.
func TestTransactionsWithTheQueuesPresenceMatchTheSchema(t *testing.T) {
	txSchema, requestBody := compile(t, "transaction.yaml"), compileRequestBody(t)
	eduSchema, presenceSchema := compile(t, "edu.yaml"), compile(t, "event-schemas/m.presence.yaml")

	tr := &capture{}
	m, err := queue.NewManager(queue.Config{Origin: "example.org", CatchUpInterval: time.Hour},
		tr, healthyStore{}, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	testenv.Background(t, "queue manager", m.Run)

	var done atomic.Int64
	typing, _ := edu.Typing{RoomID: "!r:example.org", UserID: "@u1:example.org", Typing: true}.EDU()
	testenv.Eventually(t, 5*time.Second, "the queue running", func() bool {
		return m.EnqueueEDU(context.Background(), "remote.org", queue.EDU{EDU: typing}, func() { done.Add(1) }) == nil
	})
	now := time.Now().UnixMilli()
	presences := []string{edu.Online, edu.Unavailable, edu.Offline}
	for i := 0; i < 70; i++ {
		var states []presence.State
		for j := 0; j < 2; j++ { // two users per record, as the router batches them
			n := 2*i + j
			s := presence.State{UserID: fmt.Sprintf("@u%d:example.org", n%90), Presence: presences[n%3], LastActiveTS: now - int64(n)*1000, CurrentlyActive: n%2 == 0}
			if n%4 == 0 {
				s.StatusMsg = new("status " + fmt.Sprint(n))
			}
			states = append(states, s)
		}
		if err := m.EnqueuePresence(context.Background(), "remote.org", states, func() { done.Add(1) }); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 10*time.Second, "every item sent", func() bool { return done.Load() == 71 })

	presenceEDUs := 0
	for _, tx := range tr.txns() {
		body, err := tx.Body()
		if err != nil {
			t.Fatal(err)
		}
		if err := validate(t, txSchema, body); err != nil {
			t.Fatalf("transaction does not match transaction.yaml: %v\n%s", err, body)
		}
		if err := validate(t, requestBody, body); err != nil {
			t.Fatalf("transaction does not match the /send request body: %v\n%s", err, body)
		}
		for _, e := range tx.EDUs {
			raw, err := json.Marshal(e)
			if err != nil {
				t.Fatal(err)
			}
			if err := validate(t, eduSchema, raw); err != nil {
				t.Fatalf("EDU does not match edu.yaml: %v\n%s", err, raw)
			}
			if e.Type != edu.TypePresence {
				continue
			}
			presenceEDUs++
			if err := validate(t, presenceSchema, raw); err != nil {
				t.Fatalf("the queue's m.presence EDU does not match the specification: %v\n%s", err, raw)
			}
		}
	}
	if presenceEDUs < 2 {
		t.Fatalf("%d m.presence EDUs built, want at least 2 (more than 50 users)", presenceEDUs)
	}
}
