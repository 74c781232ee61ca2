package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/schema"
)

// presenceHarness drives presence through the ingest API and rooms through
// the outbox, and reads what the remote servers were told.
type presenceHarness struct {
	*pipeline
	// offset moves the presence stage's clock against the real one.
	offset atomic.Int64
	nextID int
}

func newPresenceHarness(t *testing.T, remotes []string, tune func(*pipeline)) *presenceHarness {
	p := newPipeline(t, remotes)
	if tune != nil {
		tune(p) // the stages read the configuration from p.in
	}
	h := &presenceHarness{pipeline: p}
	now := func() time.Time { return time.Now().Add(time.Duration(h.offset.Load())) }
	p.startWith(&stageOptions{presenceNow: now}, "relay", "presence", "router", "sender", "ingest")
	return h
}

func (h *presenceHarness) post(path, method string, body any) {
	h.t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, "http://"+h.in.listeners["ingest"]+path, bytes.NewReader(b))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var msg bytes.Buffer
		_, _ = msg.ReadFrom(resp.Body)
		h.t.Fatalf("%s %s: %s %s", method, path, resp.Status, msg.String())
	}
}

type update map[string]any

func (h *presenceHarness) usersync(instance string, updates ...update) {
	h.t.Helper()
	h.post("/_fedpipe/v1/usersync", http.MethodPost, map[string]any{"instance": instance, "updates": updates})
}

func syncs(user string, on bool) update {
	return update{"kind": "user_sync", "user_id": user, "syncing": on}
}

func (h *presenceHarness) setPresence(user, presence string, status *string) {
	h.t.Helper()
	h.post("/_fedpipe/v1/presence/"+user, http.MethodPut, map[string]any{"presence": presence, "status_msg": status, "instance": "w1"})
}

// join persists user's join of room through the outbox.
func (h *presenceHarness) join(room string, users ...string) {
	h.t.Helper()
	var evs []outbox.EventWithDeltas
	for _, u := range users {
		h.nextID++
		sum := sha256.Sum256([]byte(fmt.Sprint("join", h.nextID)))
		id := "$" + base64.RawURLEncoding.EncodeToString(sum[:])
		sk := u
		evs = append(evs, outbox.EventWithDeltas{
			Event: outbox.Event{EventID: id, RoomID: room, RoomVersion: "10", Sender: u, Type: "m.room.member", StateKey: &sk,
				PDU: json.RawMessage(fmt.Sprintf(`{"type":"m.room.member","room_id":%q,"sender":%q,"state_key":%q,"content":{"membership":"join"}}`, room, u, u))},
			Deltas: []outbox.StateDelta{{Type: "m.room.member", StateKey: u, EventID: id, Membership: "join"}},
		})
	}
	if _, err := outbox.PersistBatch(context.Background(), h.in.pool, evs); err != nil {
		h.t.Fatal(err)
	}
}

// waitPresence waits until the presence stage has written each user's state
// ("state" or "state/status").
func (h *presenceHarness) waitPresence(want map[string]string) {
	h.t.Helper()
	testenv.Eventually(h.t, 30*time.Second, fmt.Sprintf("presence states %v", want), func() bool {
		for u, s := range want {
			var got string
			noQueryError(h.t, h.in.pool.QueryRow(context.Background(), `SELECT state || COALESCE('/' || status_msg, '') FROM presence_stream WHERE user_id = $1`, u).Scan(&got))
			if got != s && !(!strings.Contains(s, "/") && strings.HasPrefix(got, s+"/")) {
				return false
			}
		}
		return true
	})
}

// waitRouted waits until the router has handled every room and presence
// record, so that what it will send is on the outbound topic.
func (h *presenceHarness) waitRouted() {
	h.t.Helper()
	ctx := context.Background()
	testenv.Eventually(h.t, 30*time.Second, "relay and router caught up", func() bool {
		var seq, events, presence int64
		noQueryError(h.t, h.in.pool.QueryRow(ctx, `SELECT last_value FROM events_stream_seq`).Scan(&seq))
		noQueryError(h.t, h.in.pool.QueryRow(ctx, `SELECT COALESCE((SELECT position FROM relay_positions WHERE stream = 'events'), 0)`).Scan(&events))
		noQueryError(h.t, h.in.pool.QueryRow(ctx, `SELECT COALESCE((SELECT position FROM relay_positions WHERE stream = 'presence'), 0)`).Scan(&presence))
		return events >= seq && presence >= seq && groupCaughtUp(h.t, h.cfg.Kafka.Brokers[0], groupID(h.cfg.Kafka.TopicPrefix, routerGroup), schema.Topic(h.cfg.Kafka.TopicPrefix, "room"), schema.Topic(h.cfg.Kafka.TopicPrefix, "presence"))
	})
}

// told is what dest was told of users' presence, in order: "user=state" or
// "user=state/status".
func (h *presenceHarness) told(dest string) []string {
	var out []string
	for _, raw := range h.recv.EDUs(dest, "m.presence") {
		var c struct {
			Push []struct {
				UserID          string  `json:"user_id"`
				Presence        string  `json:"presence"`
				StatusMsg       *string `json:"status_msg"`
				CurrentlyActive *bool   `json:"currently_active"`
				LastActiveAgo   *int64  `json:"last_active_ago"`
			} `json:"push"`
		}
		if err := json.Unmarshal(raw, &c); err != nil {
			h.t.Fatalf("m.presence to %s: %v: %s", dest, err, raw)
		}
		for _, u := range c.Push {
			if u.LastActiveAgo == nil || (u.CurrentlyActive != nil) != (u.Presence == "online") {
				h.t.Fatalf("m.presence to %s breaks the format: %s", dest, raw)
			}
			s := u.UserID + "=" + u.Presence
			if u.StatusMsg != nil {
				s += "/" + *u.StatusMsg
			}
			out = append(out, s)
		}
	}
	return out
}

// settle waits until the remote servers have been told everything routed so
// far: every outbound record is committed by the sender group.
func (h *presenceHarness) settle() {
	h.t.Helper()
	h.waitRouted()
	testenv.Eventually(h.t, 30*time.Second, "sender caught up", func() bool {
		return groupCaughtUp(h.t, h.cfg.Kafka.Brokers[0], groupID(h.cfg.Kafka.TopicPrefix, senderGroup), schema.Topic(h.cfg.Kafka.TopicPrefix, "outbound"))
	})
}

func TestPresenceEndToEnd(t *testing.T) {
	h := newPresenceHarness(t, remotes(7), func(p *pipeline) {
		p.in.cfg.Presence.InstanceTimeout = 3 * time.Second
		p.in.cfg.Presence.SweepInterval = 100 * time.Millisecond
	})
	// w1 is a live sync worker: it says so every half second, as
	// producers/usersync does every minute against the default 5 minutes.
	alive, stopAlive := context.WithCancel(context.Background())
	defer stopAlive()
	aliveDone := make(chan struct{})
	go func() {
		defer close(aliveDone)
		for alive.Err() == nil {
			b, _ := json.Marshal(map[string]any{"instance": "w1", "updates": []update{{"kind": "instance_alive"}}})
			if resp, err := http.Post("http://"+h.in.listeners["ingest"]+"/_fedpipe/v1/usersync", "application/json", bytes.NewReader(b)); err == nil {
				resp.Body.Close()
			}
			select {
			case <-alive.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	defer func() { stopAlive(); <-aliveDone }()
	status := "on holiday"
	// Eight days ago @gone and @away were last active; @away left a status.
	h.offset.Store(int64(-8 * 24 * time.Hour))
	h.usersync("old-worker", syncs("@gone:local.test", true), syncs("@away:local.test", true))
	h.setPresence("@away:local.test", "online", &status)
	// The status goes through w1's partition, the clear below through
	// old-worker's: wait for the status, or it could land after the clear.
	h.waitPresence(map[string]string{"@gone:local.test": "online", "@away:local.test": "online/on holiday"})
	h.usersync("old-worker", update{"kind": "instance_clear"})
	h.waitPresence(map[string]string{"@gone:local.test": "offline", "@away:local.test": "offline"})
	h.offset.Store(0)
	h.usersync("w1", syncs("@on:local.test", true), syncs("@idle:local.test", true), syncs("@new:local.test", true))
	h.setPresence("@idle:local.test", "unavailable", nil)
	h.waitPresence(map[string]string{"@on:local.test": "online", "@idle:local.test": "unavailable", "@new:local.test": "online"})

	// remote0 is in the room with the four local users; then remote1 joins.
	h.join("!r:local.test", "@on:local.test", "@idle:local.test", "@gone:local.test", "@away:local.test", "@x:remote0.test")
	h.settle()
	before0 := h.told("remote0.test")
	h.join("!r:local.test", "@y:remote1.test")
	h.settle()
	got := h.told("remote1.test")
	slices.Sort(got)
	if want := []string{"@away:local.test=offline/on holiday", "@idle:local.test=unavailable", "@on:local.test=online"}; !slices.Equal(got, want) {
		t.Errorf("remote1, newly joined, was told %v; want %v", got, want)
	}
	if after := h.told("remote0.test"); len(after) != len(before0) {
		t.Errorf("remote0, joined before, was told %v when remote1 joined", after[len(before0):])
	}

	// A local user joins a room with two remote servers: both are told.
	h.join("!r2:local.test", "@x:remote2.test", "@y:remote3.test")
	h.settle()
	h.join("!r2:local.test", "@new:local.test")
	h.settle()
	for _, d := range []string{"remote2.test", "remote3.test"} {
		if got := h.told(d); !slices.Equal(got, []string{"@new:local.test=online"}) {
			t.Errorf("%s after @new joined: %v", d, got)
		}
	}

	// A user in 30 rooms shared with 5 servers changes presence once: each
	// server is told once.
	h.usersync("w1", syncs("@busy:local.test", true))
	for i := range 30 {
		h.join(fmt.Sprintf("!many%d:local.test", i), "@busy:local.test", fmt.Sprintf("@u%d:remote%d.test", i, 2+i%5))
	}
	h.settle()
	changed := "changed once"
	h.setPresence("@busy:local.test", "online", &changed)
	h.waitPresence(map[string]string{"@busy:local.test": "online/changed once"})
	h.settle()
	for s := 2; s < 7; s++ {
		d := fmt.Sprintf("remote%d.test", s)
		n := 0
		for _, e := range h.told(d) {
			if e == "@busy:local.test=online/changed once" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s was told @busy's change %d times: %v", d, n, h.told(d))
		}
	}

	// A sync worker shuts down cleanly: its users go offline at once, and the
	// servers sharing their rooms are told.
	h.usersync("w9", syncs("@leaving:local.test", true))
	h.join("!r3:local.test", "@leaving:local.test", "@z:remote4.test")
	h.waitPresence(map[string]string{"@leaving:local.test": "online"})
	h.usersync("w9", update{"kind": "instance_clear"})
	h.waitPresence(map[string]string{"@leaving:local.test": "offline"})
	testenv.Eventually(t, 30*time.Second, "remote4 told @leaving is offline", func() bool {
		return slices.Contains(h.told("remote4.test"), "@leaving:local.test=offline")
	})

	// A sync worker that vanishes: its users go offline after the timeout
	// (3 s here), while a worker that keeps saying it is alive keeps its own.
	h.usersync("w8", syncs("@lost:local.test", true))
	h.join("!r4:local.test", "@lost:local.test", "@z:remote5.test")
	h.waitPresence(map[string]string{"@lost:local.test": "online"})
	start := time.Now()
	h.waitPresence(map[string]string{"@lost:local.test": "offline", "@on:local.test": "online"})
	if d := time.Since(start); d < 2*time.Second {
		t.Errorf("@lost went offline %s after its worker's last record; the timeout is 3 s", d)
	}
	testenv.Eventually(t, 30*time.Second, "remote5 told @lost is offline", func() bool {
		return slices.Contains(h.told("remote5.test"), "@lost:local.test=offline")
	})
}

// TestPresenceStormOfOneUser: 10,000 updates of one user within a second reach
// each server as few entries, the last state winning.
func TestPresenceStormOfOneUser(t *testing.T) {
	h := newPresenceHarness(t, remotes(3), nil)
	h.usersync("w1", syncs("@storm:local.test", true))
	h.join("!storm:local.test", "@storm:local.test", "@a:remote0.test", "@b:remote1.test", "@c:remote2.test")
	h.waitPresence(map[string]string{"@storm:local.test": "online"})
	h.settle()
	const updates = 10000
	start := time.Now()
	for i := 0; i < updates; i += 1000 {
		var batch []update
		for j := i; j < i+1000; j++ {
			batch = append(batch, update{"kind": "set_presence", "user_id": "@storm:local.test", "presence": "online", "status_msg": fmt.Sprintf("update %d", j+1)})
		}
		h.usersync("w1", batch...)
	}
	t.Logf("%d updates ingested in %s", updates, time.Since(start))
	last := fmt.Sprintf("@storm:local.test=online/update %d", updates)
	for _, d := range h.recv.Names() {
		testenv.Eventually(t, 120*time.Second, d+" told the last state", func() bool {
			told := h.told(d)
			return len(told) > 0 && told[len(told)-1] == last
		})
	}
	h.settle()
	for _, d := range h.recv.Names() {
		told := h.told(d)
		if told[len(told)-1] != last {
			t.Errorf("%s was last told %s, want %s", d, told[len(told)-1], last)
		}
		n := 0
		for _, e := range told {
			if strings.HasPrefix(e, "@storm:local.test=online/update") {
				n++
			}
		}
		// The presence stage writes the user's state once per batch it
		// applies, and a batch ends either full (500 records: at most
		// updates/500 such) or at the last record known when it was fetched,
		// the end of one of the ingest requests (each one produce: at most
		// updates/1000 such); the router and sender send at most each state
		// written.
		if bound := updates/500 + updates/1000; n > bound {
			t.Errorf("%s was told %d of the %d updates: more than the %d states the presence stage's batching writes", d, n, updates, bound)
		}
		t.Logf("%s: %d entries for %d updates in %d transactions", d, n, updates, len(h.recv.Transactions(d)))
	}
}

// groupCaughtUp reports whether group has committed the end of every
// partition of topics: the runtime commits an offset only when its record is
// fully handled.
func groupCaughtUp(t testing.TB, broker, group string, topics ...string) bool {
	t.Helper()
	lag, err := groupLag(broker, group, topics...)
	return err == nil && lag == 0
}
