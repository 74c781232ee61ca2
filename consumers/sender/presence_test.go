package sender_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/federation/testreceiver"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

// publishPresence writes one outbound presence record for dest, as the router does.
func (e *env) publishPresence(t *testing.T, dest string, states ...schema.PresenceState) {
	t.Helper()
	rec, err := schema.OutboundRecord{V: 1, Kind: schema.KindPresence, Destination: dest, Presence: states}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := schema.DecodeOutboundRecord(rec); err != nil {
		t.Fatalf("the test wrote an invalid record: %v", err)
	}
	w := &kafka.Writer{Addr: kafka.TCP(e.addr), Topic: e.k.Topic("out"), RequiredAcks: kafka.RequireAll, Balancer: &kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte(dest), Value: rec}); err != nil {
		t.Fatal(err)
	}
}

// presencePushes returns, per m.presence EDU dest received, its updates by user.
func (e *env) presencePushes(t *testing.T, dest string) []map[string]map[string]any {
	t.Helper()
	var out []map[string]map[string]any
	for _, tx := range e.recv.Transactions(dest) {
		n := 0
		for _, ed := range tx.EDUs {
			if ed.Type != "m.presence" {
				continue
			}
			if n++; n > 1 {
				t.Fatalf("transaction %s holds more than one m.presence EDU", tx.TxnID)
			}
			var c struct {
				Push []map[string]any `json:"push"`
			}
			if err := json.Unmarshal(ed.Content, &c); err != nil || c.Push == nil {
				t.Fatalf("m.presence content %s: %v", ed.Content, err)
			}
			byUser := map[string]map[string]any{}
			for _, u := range c.Push {
				id, _ := u["user_id"].(string)
				if _, dup := byUser[id]; dup {
					t.Fatalf("m.presence EDU with two updates for %s: %s", id, ed.Content)
				}
				byUser[id] = u
			}
			out = append(out, byUser)
		}
	}
	return out
}

func TestPresenceRecordsReachTheDestinationCoalescedAndInTheSpecificationsFormat(t *testing.T) {
	const delay = 2 * time.Second
	e := setup(t, "a.test", "b.test")
	e.recv.SetFault("a.test", testreceiver.Fault{Delay: delay, Times: 1}) // a slow first transaction
	e.run(t, time.Minute)
	str := func(s string) *string { return &s }

	first := time.Now().UnixMilli()
	e.publishPresence(t, "a.test", schema.PresenceState{UserID: "@alice:me.test", Presence: "online", StatusMsg: str("hi"), LastActiveTS: first - 5000, CurrentlyActive: true})
	testenv.Eventually(t, 30*time.Second, "the first transaction in flight", func() bool { return e.recv.Requests("a.test") == 1 })
	// While it is stuck: alice changes twice, bob and carol appear.
	e.publishPresence(t, "a.test",
		schema.PresenceState{UserID: "@alice:me.test", Presence: "unavailable", StatusMsg: str("hi"), LastActiveTS: first - 4000},
		schema.PresenceState{UserID: "@bob:me.test", Presence: "offline", StatusMsg: str("gone fishing"), LastActiveTS: first - 60000, CurrentlyActive: true})
	carolTS := time.Now().UnixMilli()
	e.publishPresence(t, "a.test",
		schema.PresenceState{UserID: "@alice:me.test", Presence: "online", LastActiveTS: carolTS - 1000}, // status cleared
		schema.PresenceState{UserID: "@carol:me.test", Presence: "online", StatusMsg: str(""), LastActiveTS: carolTS, CurrentlyActive: true})
	e.publishPresence(t, "b.test", schema.PresenceState{UserID: "@alice:me.test", Presence: "online", LastActiveTS: first, CurrentlyActive: true})

	testenv.Eventually(t, 30*time.Second, "two presence transactions at a.test, one at b.test", func() bool {
		return len(e.recv.Transactions("a.test")) >= 2 && len(e.recv.Transactions("b.test")) >= 1
	})
	got := e.presencePushes(t, "a.test")
	if len(got) != 2 {
		t.Fatalf("%d m.presence EDUs at a.test, want 2 (the first state, then the rest coalesced)", len(got))
	}
	txns := e.recv.Transactions("a.test")
	shape := func(u map[string]any) string { // every field but the age
		c := map[string]any{}
		for k, v := range u {
			if k != "last_active_ago" {
				c[k] = v
			}
		}
		b, _ := json.Marshal(c)
		return string(b)
	}
	for _, tc := range []struct {
		name string
		u    map[string]any
		want string
	}{
		{"alice first", got[0]["@alice:me.test"], `{"currently_active":true,"presence":"online","status_msg":"hi","user_id":"@alice:me.test"}`},
		{"alice latest wins, status cleared", got[1]["@alice:me.test"], `{"currently_active":false,"presence":"online","user_id":"@alice:me.test"}`},
		{"bob offline: no currently_active", got[1]["@bob:me.test"], `{"presence":"offline","status_msg":"gone fishing","user_id":"@bob:me.test"}`},
		{"carol empty status: no status_msg", got[1]["@carol:me.test"], `{"currently_active":true,"presence":"online","user_id":"@carol:me.test"}`},
	} {
		if tc.u == nil {
			t.Errorf("%s: no update", tc.name)
			continue
		}
		if s := shape(tc.u); s != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, s, tc.want)
		}
	}
	if len(got[1]) != 3 {
		t.Errorf("second m.presence EDU for %d users, want 3", len(got[1]))
	}
	// Ages are measured when the transaction is built: the second one waited
	// for the slow first (built ≥ delay after the first record was written),
	// so carol's age counts the wait, and never exceeds its arrival.
	ago := int64(got[1]["@carol:me.test"]["last_active_ago"].(float64))
	low, high := first+delay.Milliseconds()-carolTS, txns[1].At.UnixMilli()-carolTS
	if ago < low || ago > high {
		t.Errorf("carol's last_active_ago %d ms, want between %d and %d (aged when the queue sends, not when it consumed the record)", ago, low, high)
	}
	if a := int64(got[0]["@alice:me.test"]["last_active_ago"].(float64)); a < 5000 || a > txns[0].At.UnixMilli()-(first-5000) {
		t.Errorf("alice's first last_active_ago %d ms", a)
	}
	b := e.presencePushes(t, "b.test")
	if len(b) != 1 || shape(b[0]["@alice:me.test"]) != `{"currently_active":true,"presence":"online","user_id":"@alice:me.test"}` {
		t.Errorf("b.test received %v", b)
	}
	t.Logf("carol's last_active_ago %d ms (bounds %d–%d)", ago, low, high)
}

func TestPresenceForABackedOffDestinationIsDroppedAndCommitted(t *testing.T) {
	e := setup(t, "a.test", "b.test")
	e.recv.SetFault("a.test", testreceiver.Fault{Status: 403})
	e.member(t, time.Hour)
	now := time.Now().UnixMilli()
	e.publishPresence(t, "a.test", schema.PresenceState{UserID: "@a:me.test", Presence: "online", LastActiveTS: now})
	testenv.Eventually(t, 20*time.Second, "backoff persisted", func() bool { return e.retryInterval("a.test") > 0 })
	for i := 0; i < 4; i++ {
		e.publishPresence(t, "a.test", schema.PresenceState{UserID: fmt.Sprintf("@u%d:me.test", i), Presence: "online", LastActiveTS: now})
	}
	e.publishPresence(t, "b.test", schema.PresenceState{UserID: "@a:me.test", Presence: "online", LastActiveTS: now})
	testenv.Eventually(t, 20*time.Second, "all 6 records committed", func() bool { return e.committed(t) == 6 })
	if n := len(e.recv.Transactions("a.test")); n != 0 {
		t.Fatalf("%d transactions accepted by the forbidden destination", n)
	}
	if n := len(e.presencePushes(t, "b.test")); n != 1 {
		t.Fatalf("%d m.presence EDUs at the healthy destination, want 1", n)
	}
}
