package router_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/typing"
	"github.com/fedpipe/fedpipe/schema"
)

// typingPing is the router's re-announcement interval in these tests.
const typingPing = 300 * time.Millisecond

// typingSent lists, per destination, the m.typing EDUs written so far, as
// "user=true|false", in order.
func typingSent(t *testing.T, c *collector) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, m := range c.snapshot() {
		rec, err := schema.DecodeOutboundRecord(m.Value)
		if err != nil || rec.EDUType != "m.typing" {
			continue
		}
		if err := schema.ValidateRecord("outbound", m.Value); err != nil || string(m.Key) != rec.Destination || rec.EDUKey == "" {
			t.Fatalf("typing record %s keyed %s: %v", m.Value, m.Key, err)
		}
		var c struct {
			User   string `json:"user_id"`
			Typing bool   `json:"typing"`
		}
		if err := json.Unmarshal(rec.Content, &c); err != nil {
			t.Fatal(err)
		}
		out[rec.Destination] = append(out[rec.Destination], fmt.Sprintf("%s=%t", c.User, c.Typing))
	}
	return out
}

func (e *env) typing(t *testing.T, room, user string, on bool, timeout time.Duration) {
	t.Helper()
	rec, err := typing.Record("", room, user, on, timeout, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	v, _ := rec.Marshal()
	w := e.writer(typingTopic)
	defer w.Close()
	if err := w.WriteMessages(context.Background(), typing.Message(rec, v)); err != nil {
		t.Fatal(err)
	}
}

// Typing reaches exactly the servers joined to the room, is announced again
// every ping interval while the user types, and ends with typing: false when
// the timeout passes or the user stops; a remote user's typing is refused.
func TestTypingReachesTheRoomsServersAndNeverSticks(t *testing.T) {
	e := newEnv(t)
	s := newStream()
	for _, u := range []string{"@alice:hs.test", "@bob:hs.test", "@x:a.test", "@y:b.test"} {
		join(t, s, "!r:hs.test", u)
	}
	join(t, s, "!q:hs.test", "@z:c.test")
	e.publish(t, s.msgs)
	out := e.collect(t, outboundTopic, outParts)
	e.runRouter(t, "typing")
	testenv.Eventually(t, 60*time.Second, "router caught up", func() bool { return e.caughtUp(t, "typing") && out.readAll(t, e, outParts) })

	e.typing(t, "!r:hs.test", "@alice:hs.test", true, 4*typingPing) // times out
	e.typing(t, "!r:hs.test", "@bob:hs.test", true, time.Minute)    // stops
	e.typing(t, "!r:hs.test", "@eve:evil.test", true, time.Minute)  // not ours: dead-lettered
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("typing sent: %v", typingSent(t, out))
		}
	})
	// last is user's last state at dest ("" for none).
	last := func(dest, user string) string {
		sent := typingSent(t, out)[dest]
		for i := len(sent) - 1; i >= 0; i-- {
			if strings.HasPrefix(sent[i], user+"=") {
				return sent[i]
			}
		}
		return ""
	}
	testenv.Eventually(t, 20*time.Second, "alice timed out at a.test and b.test", func() bool {
		out.readAll(t, e, outParts)
		return last("a.test", "@alice:hs.test") == "@alice:hs.test=false" && last("b.test", "@alice:hs.test") == "@alice:hs.test=false"
	})
	e.typing(t, "!r:hs.test", "@bob:hs.test", false, 0)
	testenv.Eventually(t, 20*time.Second, "bob's stop at a.test and b.test", func() bool {
		out.readAll(t, e, outParts)
		return last("a.test", "@bob:hs.test") == "@bob:hs.test=false" && last("b.test", "@bob:hs.test") == "@bob:hs.test=false"
	})
	// Nothing more comes: no one is typing (three ping intervals observed).
	before := typingSent(t, out)
	time.Sleep(3 * typingPing)
	out.readAll(t, e, outParts)
	after := typingSent(t, out)
	for _, d := range []string{"a.test", "b.test"} {
		if len(after[d]) != len(before[d]) {
			t.Fatalf("%s got %v after everyone stopped typing", d, after[d][len(before[d]):])
		}
		alicePings := 0
		for _, x := range after[d] {
			if x == "@alice:hs.test=true" {
				alicePings++
			}
		}
		if alicePings < 2 {
			t.Fatalf("%s: alice announced %d times while typing for 4 ping intervals: %v", d, alicePings, after[d])
		}
	}
	if got := typingSent(t, out); len(got["c.test"]) != 0 || len(got["hs.test"]) != 0 || len(got) != 2 {
		t.Fatalf("typing went to %v; want a.test and b.test only", got)
	}
	dead := e.collect(t, deadTopic, 1)
	testenv.Eventually(t, 10*time.Second, "the remote user's typing dead-lettered", func() bool {
		return dead.readAll(t, e, 1) && dead.count() == 1
	})
	t.Logf("a.test got %v", after["a.test"])
}
