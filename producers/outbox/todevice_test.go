package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/schema"
)

// eduBytes is the size of the EDU a row becomes in a transaction body,
// which carries the content byte for byte.
func eduBytes(e outbox.ToDeviceEDU) int {
	return len(`{"content":,"edu_type":"m.direct_to_device"}`) + len(e.Content)
}

// A message to 30 devices of 10 KiB each on one server (contents that
// encoding/json would escape six-fold) is split into EDUs within 64 KiB,
// every device in exactly one, ids message_id, message_id/1, …; another
// server gets its own EDU and our own users none.
func TestSplitToDevicePacksEachDestinationWithin64KiB(t *testing.T) {
	msg := outbox.ToDevice{Sender: "@alice:hs.test", Type: "m.room_key", MessageID: "m1", Messages: map[string]map[string]json.RawMessage{
		"@carol:other.test": {"C1": json.RawMessage(`{"k": 1}`)},
		"@me:hs.test":       {"M1": json.RawMessage(`{}`)},
	}}
	body := json.RawMessage(`{"ciphertext":"` + strings.Repeat("<&>", 10<<10/3) + `"}`)
	for u := 0; u < 3; u++ {
		devices := map[string]json.RawMessage{}
		for d := 0; d < 10; d++ {
			devices[fmt.Sprintf("D%d", d)] = body
		}
		msg.Messages[fmt.Sprintf("@u%d:remote.test", u)] = devices
	}
	edus, err := outbox.SplitToDevice("hs.test", msg)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	var remote []string
	for _, e := range edus {
		if n := eduBytes(e); n > schema.MaxEDUBytes {
			t.Errorf("EDU %s for %s is %d bytes", e.MessageID, e.Destination, n)
		}
		var c struct {
			MessageID string                                `json:"message_id"`
			Sender    string                                `json:"sender"`
			Messages  map[string]map[string]json.RawMessage `json:"messages"`
		}
		if err := json.Unmarshal(e.Content, &c); err != nil {
			t.Fatal(err)
		}
		if c.MessageID != e.MessageID || c.Sender != "@alice:hs.test" {
			t.Errorf("EDU content says %s from %s, row %s", c.MessageID, c.Sender, e.MessageID)
		}
		for u, ds := range c.Messages {
			for d := range ds {
				seen[u+" "+d]++
			}
		}
		if e.Destination == "remote.test" {
			remote = append(remote, e.MessageID)
		}
	}
	if len(seen) != 31 || seen["@me:hs.test M1"] != 0 {
		t.Fatalf("devices covered %d (want 31, ours left out): %v", len(seen), seen)
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("%s in %d EDUs", k, n)
		}
	}
	if len(remote) < 5 || remote[0] != "m1" || remote[1] != "m1/1" || remote[len(remote)-1] != fmt.Sprintf("m1/%d", len(remote)-1) {
		t.Fatalf("remote.test's EDUs %v: want m1, m1/1, … (30 × 10 KiB need at least 5)", remote)
	}
	t.Logf("30 messages of %d bytes for remote.test: %d EDUs", len(body), len(remote))
}

// Bad input names its field; a device's message alone too large for an EDU
// is a SizeError; nothing is written either way.
func TestSendToDeviceRefusesBadInputWritingNothing(t *testing.T) {
	pool := testenv.Pool(t, testenv.Database(t))
	if err := schema.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	good := func() outbox.ToDevice {
		return outbox.ToDevice{Sender: "@alice:hs.test", Type: "m.room_key", MessageID: "m1",
			Messages: map[string]map[string]json.RawMessage{"@bob:remote.test": {"B1": json.RawMessage(`{"a":1}`)}}}
	}
	big := json.RawMessage(`{"pad":"` + strings.Repeat("x", 65500) + `"}`)
	for _, tc := range []struct {
		name, field string
		change      func(*outbox.ToDevice)
		size        bool
	}{
		{"remote sender", "sender", func(m *outbox.ToDevice) { m.Sender = "@eve:evil.test" }, false},
		{"NUL in type", "type", func(m *outbox.ToDevice) { m.Type = "m.\x00" }, false},
		{"long message id", "message_id", func(m *outbox.ToDevice) { m.MessageID = strings.Repeat("i", 241) }, false},
		{"no recipients", "messages", func(m *outbox.ToDevice) { m.Messages = nil }, false},
		{"bad user", `messages["bob"]`, func(m *outbox.ToDevice) { m.Messages["bob"] = map[string]json.RawMessage{"D": json.RawMessage(`{}`)} }, false},
		{"array message", `messages["@bob:remote.test"]["B1"]`, func(m *outbox.ToDevice) { m.Messages["@bob:remote.test"]["B1"] = json.RawMessage(`[1]`) }, false},
		{"float", `messages["@bob:remote.test"]["B1"]`, func(m *outbox.ToDevice) { m.Messages["@bob:remote.test"]["B1"] = json.RawMessage(`{"x":1.5}`) }, false},
		{"too large", `messages["@bob:remote.test"]["B2"]`, func(m *outbox.ToDevice) { m.Messages["@bob:remote.test"]["B2"] = big }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := good()
			tc.change(&m)
			_, err := outbox.SendToDeviceBatch(context.Background(), pool, "hs.test", m)
			var ve *outbox.ValidationError
			if !errors.As(err, &ve) || ve.Field != tc.field {
				t.Fatalf("error %v, want a ValidationError naming %s", err, tc.field)
			}
			var se *outbox.SizeError
			if errors.As(err, &se) != tc.size {
				t.Fatalf("SizeError %v, want %v", errors.As(err, &se), tc.size)
			}
		})
	}
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM device_federation_outbox").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows written (%v)", n, err)
	}
	// The good message is written, in the caller's transaction.
	err := pgx.BeginFunc(context.Background(), pool, func(tx pgx.Tx) error {
		pos, err := outbox.SendToDevice(context.Background(), tx, "hs.test", good())
		if err == nil && len(pos) != 1 {
			err = fmt.Errorf("positions %v", pos)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
