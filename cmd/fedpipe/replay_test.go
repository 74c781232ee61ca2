package main

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/federation/testreceiver"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/schema"
)

// A replay of the outbound topic into the sender (its group stopped and its
// offsets reset to the earliest with fedpipe offsets) re-sends nothing the
// destinations accepted: no PDU, no to-device message, not even a request
// to a destination now failing. What comes after follows the catch-up rules:
// the healthy destination gets each new event, the failing one, once it
// recovers, only the room's latest.
func TestOutboundReplaySendsNothingAcceptedAndCatchesUpAfter(t *testing.T) {
	p := newPipeline(t, remotes(2))
	p.in.cfg.Federation.BackoffInitial, p.in.cfg.Federation.BackoffMax = 2*time.Second, 2*time.Second
	p.start("relay", "router")
	stopSender := p.start("sender")
	room, alice := "!outbound:local.test", "@alice:local.test"
	(&presenceHarness{pipeline: p}).join(room, alice, "@bob:remote0.test", "@carol:remote1.test")
	w := &roomWriter{t: t, room: room, sender: alice}
	persist := func(bodies ...string) (ids []string) {
		t.Helper()
		var evs []outbox.EventWithDeltas
		for _, b := range bodies {
			evs = append(evs, w.message(b))
			ids = append(ids, evs[len(evs)-1].Event.EventID)
		}
		if _, err := outbox.PersistBatch(context.Background(), p.in.pool, evs); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	persist("m1", "m2", "m3", "m4", "m5")
	p.sendToDevice("td", 0, 5, 10, "remote0.test", "remote1.test")
	first := map[string]int{"m1": 1, "m2": 1, "m3": 1, "m4": 1, "m5": 1}
	prefix, broker := p.cfg.Kafka.TopicPrefix, p.cfg.Kafka.Brokers[0]
	sender := groupID(prefix, senderGroup)
	testenv.Eventually(t, 60*time.Second, "the five messages and five to-device messages at both, the sender caught up", func() bool {
		for _, d := range []string{"remote0.test", "remote1.test"} {
			if fmt.Sprint(received(t, p, d, alice)) != fmt.Sprint(first) || len(toDeviceIDs(t, p.recv, d)) != 5 {
				return false
			}
		}
		return groupCaughtUp(t, broker, sender, schema.Topic(prefix, "outbound"))
	})
	requests := p.recv.Requests("remote1.test")

	if err := stopSender(); err != nil {
		t.Fatal(err)
	}
	code, out := runCode("offsets", "reset", "--group="+sender, "--all-topics", "--to-earliest", "--execute", "--kafka.brokers="+broker, "--log_level=warn")
	if code != 0 {
		t.Fatalf("offsets reset exits %d:\n%s", code, out)
	}
	p.recv.SetFault("remote1.test", testreceiver.Fault{Status: http.StatusInternalServerError})
	// Re-sends after a failure 10 ms apart, so that remote1 backs off soon.
	p.startWith(&stageOptions{senderQueue: func(c *queue.Config) { c.RetryDelay = 10 * time.Millisecond }}, "sender")
	reg := p.regs[len(p.regs)-1]
	testenv.Eventually(t, 60*time.Second, "the sender through the replayed outbound topic", func() bool {
		return groupCaughtUp(t, broker, sender, schema.Topic(prefix, "outbound"))
	})
	if n := testenv.Value(t, reg, "fedpipe_sender_pdus_replayed_total"); n != 10 {
		t.Errorf("%v replayed PDUs found already accepted, want 10 (five for each server)", n)
	}
	for _, d := range []string{"remote0.test", "remote1.test"} {
		if got := received(t, p, d, alice); fmt.Sprint(got) != fmt.Sprint(first) {
			t.Errorf("%s received %v after the replay, want each message once", d, got)
		}
		if ids := toDeviceIDs(t, p.recv, d); len(ids) != 5 {
			t.Errorf("%s received to-device messages %v after the replay, want each once", d, ids)
		}
	}
	if n := p.recv.Requests("remote1.test"); n != requests {
		t.Errorf("the failing remote1.test was asked %d times by the replay", n-requests)
	}
	if t.Failed() {
		t.FailNow()
	}

	// After the replay: remote0 gets both new messages; remote1, failing,
	// backs off, records the room for catch-up and, once it answers, gets
	// the latest.
	persist("m6")
	testenv.Eventually(t, 30*time.Second, "remote1.test backing off", func() bool {
		var ms int64
		err := p.in.pool.QueryRow(context.Background(), `SELECT retry_interval_ms FROM sender_destinations WHERE destination = 'remote1.test'`).Scan(&ms)
		return err == nil && ms > 0
	})
	m7 := persist("m7")[0]
	testenv.Eventually(t, 30*time.Second, "m6 and m7 at remote0.test, m7 recorded for remote1.test's catch-up", func() bool {
		got := received(t, p, "remote0.test", alice)
		var n int
		err := p.in.pool.QueryRow(context.Background(), `SELECT count(*) FROM sender_catchup WHERE destination = 'remote1.test' AND event_id = $1`, m7).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return got["m6"] == 1 && got["m7"] == 1 && n == 1
	})
	p.recv.ClearFault("remote1.test")
	testenv.Eventually(t, 30*time.Second, "remote1.test caught up with the room's latest", func() bool {
		return received(t, p, "remote1.test", alice)["m7"] == 1
	})
	if got := received(t, p, "remote1.test", alice); got["m6"] != 0 {
		t.Fatalf("remote1.test received %v: catch-up sends the room's latest event only", got)
	}
}

// A replay of the usersync topic rebuilds presence: with the presence
// stage stopped and its tables emptied (as an operator rebuilding them
// would), its group reset to the earliest, the restarted stage computes the
// same states and syncing sessions from the records.
func TestUsersyncReplayRebuildsPresence(t *testing.T) {
	p := newPipeline(t, nil)
	h := &presenceHarness{pipeline: p}
	p.start("ingest")
	stopPresence := p.start("presence")
	alice, bob, carol := "@alice:local.test", "@bob:local.test", "@carol:local.test"
	lunch := "lunch"
	h.usersync("w1", syncs(alice, true), syncs(bob, true), syncs(carol, true))
	h.usersync("w2", syncs(carol, true))
	h.setPresence(bob, "unavailable", &lunch)
	h.usersync("w2", syncs(carol, false))
	state := func() string {
		t.Helper()
		var s string
		err := p.in.pool.QueryRow(context.Background(), `SELECT
			COALESCE((SELECT string_agg(user_id || '=' || state || COALESCE('/' || status_msg, ''), ' ' ORDER BY user_id) FROM presence_state), '') || ' | ' ||
			COALESCE((SELECT string_agg(instance || ':' || user_id, ' ' ORDER BY instance, user_id) FROM presence_syncing), '')`).Scan(&s)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	const want = "@alice:local.test=online @bob:local.test=unavailable/lunch @carol:local.test=online | w1:@alice:local.test w1:@bob:local.test w1:@carol:local.test"
	testenv.Eventually(t, 30*time.Second, "the presence stage's states", func() bool {
		return state() == want
	})
	prefix, broker := p.cfg.Kafka.TopicPrefix, p.cfg.Kafka.Brokers[0]
	group := groupID(prefix, presenceGroup)
	testenv.Eventually(t, 30*time.Second, "the presence group caught up", func() bool {
		return groupCaughtUp(t, broker, group, schema.Topic(prefix, "usersync"))
	})

	if err := stopPresence(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.in.pool.Exec(context.Background(), `TRUNCATE presence_state, presence_syncing, presence_instances`); err != nil {
		t.Fatal(err)
	}
	code, out := runCode("offsets", "reset", "--group="+group, "--all-topics", "--to-earliest", "--execute", "--kafka.brokers="+broker, "--log_level=warn")
	if code != 0 {
		t.Fatalf("offsets reset exits %d:\n%s", code, out)
	}
	p.start("presence")
	testenv.Eventually(t, 30*time.Second, "the presence group through the replayed usersync topic", func() bool {
		return groupCaughtUp(t, broker, group, schema.Topic(prefix, "usersync"))
	})
	if got := state(); got != want {
		t.Fatalf("rebuilt from the replay:\n%s\nwant\n%s", got, want)
	}
}
