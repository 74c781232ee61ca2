package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"

	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/schema"
)

// fuzzConfig is the ingest configuration the fuzz targets decode with.
func fuzzConfig(t *testing.T) Config {
	cfg := Config{MaxBodyBytes: 1 << 20, ServerName: "hs.test"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// clientError reports whether err is one the API answers as a client error.
func clientError(err error) bool {
	var re *requestError
	var ve *outbox.ValidationError
	return errors.As(err, &re) || errors.As(err, &ve)
}

// FuzzDecodeEvents: any body either is refused with a typed client error, or
// decodes to events that pass the outbox's validation or are refused by it
// with a typed error, and that encode back to a body decoding to the same events.
func FuzzDecodeEvents(f *testing.F) {
	f.Add([]byte(`{"events":[{"room_version":"10","event_id":"$a","pdu":{"room_id":"!r:hs.test","sender":"@a:hs.test","type":"m.room.member","state_key":"@a:hs.test","content":{"membership":"join"}},"state_deltas":[{"type":"m.room.member","state_key":"@a:hs.test","event_id":"$a","membership":"join"}]}]}`))
	f.Add([]byte(`{"events":[{"room_version":"12","event_id":"$c","pdu":{"sender":"@a:hs.test","type":"m.room.create","state_key":""}}]}`))
	f.Add([]byte(`{"events":[{"room_version":"10","event_id":"$a\u0000","pdu":{"room_id":"!r:hs.test","sender":"@a:hs.test","type":"m.room.message"}}]}`))
	f.Add([]byte(`{"events":[]}`))
	f.Add([]byte(`{"events":null}`))
	f.Add([]byte(`{"events":[{"pdu":[]}]}`))
	f.Add([]byte(`[1,2`))
	f.Fuzz(func(t *testing.T, body []byte) {
		decode := decodeRequest(fuzzConfig(t))
		got, err := decode(context.Background(), httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body)))
		if err != nil {
			if !clientError(err) {
				t.Fatalf("untyped error %T: %v", err, err)
			}
			return
		}
		req := got.(persistRequest)
		for i := range req.events {
			if err := outbox.Validate(&req.events[i]); err != nil && !clientError(err) {
				t.Fatalf("outbox refused events[%d] with an untyped error %T: %v", i, err, err)
			}
		}
		again, err := decode(context.Background(), httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(encodeEvents(t, req.events))))
		if err != nil {
			t.Fatalf("re-encoded events refused: %v", err)
		}
		if !reflect.DeepEqual(normalize(again.(persistRequest).events), normalize(req.events)) {
			t.Fatalf("events changed through a re-encoding:\n%+v\n%+v", req.events, again.(persistRequest).events)
		}
	})
}

// encodeEvents writes events as an ingest request body.
func encodeEvents(t *testing.T, events []outbox.EventWithDeltas) []byte {
	type delta struct {
		Type           string `json:"type"`
		StateKey       string `json:"state_key"`
		EventID        string `json:"event_id"`
		PrevEventID    string `json:"prev_event_id,omitempty"`
		Membership     string `json:"membership,omitempty"`
		PrevMembership string `json:"prev_membership,omitempty"`
	}
	type event struct {
		RoomVersion string          `json:"room_version"`
		EventID     string          `json:"event_id"`
		PDU         json.RawMessage `json:"pdu"`
		StateDeltas []delta         `json:"state_deltas,omitempty"`
	}
	body := struct {
		Events []event `json:"events"`
	}{Events: []event{}}
	for _, ev := range events {
		e := event{RoomVersion: ev.RoomVersion, EventID: ev.EventID, PDU: ev.PDU}
		for _, d := range ev.Deltas {
			e.StateDeltas = append(e.StateDeltas, delta{d.Type, d.StateKey, d.EventID, d.PrevEventID, d.Membership, d.PrevMembership})
		}
		body.Events = append(body.Events, e)
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false) // PDU bytes are forwarded as they are
	if err := enc.Encode(body); err != nil {
		t.Fatalf("encoding decoded events: %v", err)
	}
	return out.Bytes()
}

// normalize compacts PDU bytes, which json.Marshal of a RawMessage compacts.
func normalize(events []outbox.EventWithDeltas) []outbox.EventWithDeltas {
	out := make([]outbox.EventWithDeltas, len(events))
	for i, ev := range events {
		var buf bytes.Buffer
		if json.Compact(&buf, ev.PDU) == nil {
			ev.PDU = buf.Bytes()
		}
		if len(ev.Deltas) == 0 {
			ev.Deltas = nil
		}
		out[i] = ev
	}
	return out
}

// FuzzDecodeUserSync and FuzzDecodePresence: any body is either refused with a
// typed client error or becomes usersync records the presence stage decodes:
// nothing the API accepts can be poison downstream.
func FuzzDecodeUserSync(f *testing.F) {
	f.Add([]byte(`{"instance":"sync1","updates":[{"kind":"user_sync","user_id":"@a:hs.test","syncing":true},{"kind":"user_active","user_id":"@a:hs.test"},{"kind":"set_presence","user_id":"@a:hs.test","presence":"unavailable","status_msg":"lunch"}]}`))
	f.Add([]byte(`{"instance":"sync1","updates":[{"kind":"instance_clear"}]}`))
	f.Add([]byte(`{"instance":"s\u0000","updates":[]}`))
	f.Add([]byte(`{"instance":"sync1","updates":[{"kind":"set_presence","user_id":"@a:hs.test","presence":"online","status_msg":"\u0000"}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := decodeUserSync(fuzzConfig(t))(context.Background(), httptest.NewRequest(http.MethodPost, UserSyncPath, bytes.NewReader(body)))
		checkUserSync(t, got, err)
	})
}

func FuzzDecodePresence(f *testing.F) {
	f.Add("@a:hs.test", []byte(`{"presence":"online","status_msg":"at lunch","instance":"sync1"}`))
	f.Add("@a:hs.test", []byte(`{"presence":"offline","status_msg":null}`))
	f.Add("@a:other.test", []byte(`{"presence":"online"}`))
	f.Add("@a\x00:hs.test", []byte(`{"presence":"online"}`))
	f.Fuzz(func(t *testing.T, user string, body []byte) {
		r := httptest.NewRequest(http.MethodPut, "/_fedpipe/v1/presence/x", bytes.NewReader(body))
		r.SetPathValue("userId", user)
		got, err := decodePresence(fuzzConfig(t))(context.Background(), r)
		checkUserSync(t, got, err)
	})
}

func checkUserSync(t *testing.T, got any, err error) {
	t.Helper()
	if err != nil {
		if !clientError(err) {
			t.Fatalf("untyped error %T: %v", err, err)
		}
		return
	}
	for i, m := range got.(usersyncRequest).msgs {
		rec, err := schema.DecodeUserSyncRecord(m.Value)
		if err != nil {
			t.Fatalf("accepted update %d is poison for the presence stage: %v\n%s", i, err, m.Value)
		}
		if string(m.Key) != rec.Instance {
			t.Fatalf("update %d keyed %q, its instance is %q", i, m.Key, rec.Instance)
		}
	}
}

// A PDU's keys are read as spelt: "TYPE" is not "type" to a remote server, so
// it must not be to fedpipe either (found by FuzzDecodeEvents).
func TestPDUKeysAreCaseSensitive(t *testing.T) {
	decode := decodeRequest(fuzzConfig(t))
	for key, body := range map[string]string{
		"type":    `{"events":[{"room_version":"10","event_id":"$a","pdu":{"room_id":"!r:hs.test","sender":"@a:hs.test","TYPE":"m.room.message"}}]}`,
		"room_id": `{"events":[{"room_version":"10","event_id":"$a","pdu":{"Room_ID":"!r:hs.test","sender":"@a:hs.test","type":"m.room.message"}}]}`,
		"sender":  `{"events":[{"room_version":"10","event_id":"$a","pdu":{"room_id":"!r:hs.test","Sender":"@a:hs.test","type":"m.room.message"}}]}`,
	} {
		_, err := decode(context.Background(), httptest.NewRequest(http.MethodPost, Path, bytes.NewReader([]byte(body))))
		var re *requestError
		if !errors.As(err, &re) || re.status != http.StatusBadRequest || re.msg != "events[0].pdu."+key+": missing" {
			t.Errorf("a PDU spelling %s otherwise: %v, want 400 events[0].pdu.%s: missing", key, err, key)
		}
	}
}
