package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/schema"
)

// A ban of a server's last joined user and an invite of a user whose server
// has no one in the room go to the servers joined before each event, the
// first time and again when the room topic is replayed after a SIGKILL of the
// process running router and sender (its group's offsets reset to the
// earliest, as an operator replays after a crash): the banned user's server
// gets the ban and nothing after it, the invitee's server nothing ever, the
// server still joined everything; and the replay re-sends nothing, each
// routed again to the same servers and found already accepted by the sender
// (sender_destination_rooms).
func TestBanAndInviteRouteAlikeAfterACrashAndReplay(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills a fedpipe process")
	}
	bin := buildFedpipe(t)
	p := newPipeline(t, remotes(3))
	p.start("relay")
	admin := fmt.Sprintf("127.0.0.1:%d", testenv.FreeLoopbackPort(t))
	startChild := func() *exec.Cmd { return startRouterSender(t, bin, append(p.env(), "FEDPIPE_ADMIN_LISTEN="+admin)) }
	child := startChild()
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })

	room, alice := "!replay:local.test", "@alice:local.test"
	bob, carol, zed := "@bob:remote0.test", "@carol:remote1.test", "@zed:remote2.test"
	(&presenceHarness{pipeline: p}).join(room, alice, bob, carol)
	w := &roomWriter{t: t, room: room, sender: alice}
	if _, err := outbox.PersistBatch(context.Background(), p.in.pool, []outbox.EventWithDeltas{
		w.message("m1"), w.member(bob, "ban"), w.message("m2"), w.member(zed, "invite"), w.message("m3"),
	}); err != nil {
		t.Fatal(err)
	}

	received := func(dest string) map[string]int { return received(t, p, dest, alice) }
	prefix, broker := p.cfg.Kafka.TopicPrefix, p.cfg.Kafka.Brokers[0]
	settled := func(what string) {
		t.Helper()
		testenv.Eventually(t, 90*time.Second, what, func() bool {
			return groupCaughtUp(t, broker, groupID(prefix, routerGroup), schema.Topic(prefix, "room")) &&
				groupCaughtUp(t, broker, groupID(prefix, senderGroup), schema.Topic(prefix, "outbound"))
		})
	}
	check := func() {
		t.Helper()
		want := map[string]map[string]int{
			"remote0.test": {"m1": 1, "ban " + bob: 1},
			"remote1.test": {"m1": 1, "ban " + bob: 1, "m2": 1, "invite " + zed: 1, "m3": 1},
			"remote2.test": {},
		}
		for dest, w := range want {
			if got := received(dest); fmt.Sprint(got) != fmt.Sprint(w) {
				t.Errorf("%s received %v, want %v", dest, got, w)
			}
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	testenv.Eventually(t, 60*time.Second, "m3 at remote1.test", func() bool { return received("remote1.test")["m3"] > 0 })
	settled("router and sender caught up")
	check()

	// The crash, then the replay of everything the router consumed.
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	group := groupID(prefix, routerGroup)
	testenv.Eventually(t, 60*time.Second, "the router group's offsets reset (refused until the killed member expires)", func() bool {
		cmd := exec.Command(bin, "offsets", "reset", "--group="+group, "--all-topics", "--to-earliest", "--execute")
		cmd.Env = p.env()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Logf("offsets reset: %v: %s", err, out)
		}
		return err == nil
	})
	child = startChild()
	// Routed again to the same servers: m1 and the ban to remote0 and
	// remote1, m2, the invite and m3 to remote1; each found accepted.
	const rerouted = 7
	testenv.Eventually(t, 60*time.Second, "the replayed PDUs found already accepted", func() bool {
		return scrape(t, "http://"+admin+"/metrics", "fedpipe_sender_pdus_replayed_total") == rerouted
	})
	settled("router and sender caught up after the replay")
	check()
}

// scrape reads a counter or gauge without labels from a Prometheus text
// page; -1 while the page cannot be read, and a failure when it has no such
// metric.
func scrape(t *testing.T, url, name string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("%s: %v", url, err)
	}
	mf, ok := mfs[name]
	if !ok || len(mf.GetMetric()) != 1 {
		t.Fatalf("%s has no %s", url, name)
	}
	m := mf.GetMetric()[0]
	return m.GetCounter().GetValue() + m.GetGauge().GetValue()
}

// roomWriter makes events of one room by one local sender, with ids of their
// own, for outbox.PersistBatch.
type roomWriter struct {
	t            *testing.T
	room, sender string
	n            int
}

func (w *roomWriter) event(typ string, stateKey *string, content string, deltas ...outbox.StateDelta) outbox.EventWithDeltas {
	w.t.Helper()
	w.n++
	sum := sha256.Sum256([]byte(fmt.Sprint(w.room, w.n)))
	id := "$" + base64.RawURLEncoding.EncodeToString(sum[:])
	pdu := map[string]any{"type": typ, "room_id": w.room, "sender": w.sender, "content": json.RawMessage(content)}
	if stateKey != nil {
		pdu["state_key"] = *stateKey
	}
	raw, err := json.Marshal(pdu)
	if err != nil {
		w.t.Fatal(err)
	}
	for i := range deltas {
		deltas[i].EventID = id
	}
	return outbox.EventWithDeltas{Event: outbox.Event{EventID: id, RoomID: w.room, RoomVersion: "10", Sender: w.sender, Type: typ, StateKey: stateKey, PDU: raw}, Deltas: deltas}
}

// message is an m.room.message with body.
func (w *roomWriter) message(body string) outbox.EventWithDeltas {
	return w.event("m.room.message", nil, fmt.Sprintf(`{"msgtype":"m.text","body":%q}`, body))
}

// member is a membership event of target, with its state delta.
func (w *roomWriter) member(target, membership string) outbox.EventWithDeltas {
	return w.event("m.room.member", &target, fmt.Sprintf(`{"membership":%q}`, membership),
		outbox.StateDelta{Type: "m.room.member", StateKey: target, Membership: membership})
}

// received counts dest's PDUs sent by sender: by body for a message,
// "membership state_key" for a member event.
func received(t *testing.T, p *pipeline, dest, sender string) map[string]int {
	t.Helper()
	got := map[string]int{}
	for _, raw := range p.recv.PDUs(dest) {
		var e struct {
			Sender   string `json:"sender"`
			StateKey string `json:"state_key"`
			Content  struct {
				Body       string `json:"body"`
				Membership string `json:"membership"`
			} `json:"content"`
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatal(err)
		}
		if e.Sender != sender {
			continue
		}
		if e.Content.Membership != "" {
			got[e.Content.Membership+" "+e.StateKey]++
		} else {
			got[e.Content.Body]++
		}
	}
	return got
}
