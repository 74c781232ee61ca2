package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/fedpipe/fedpipe/producers/outbox"
)

// requestError is a client error answered as is.
type requestError struct {
	status  int
	errcode string
	msg     string
}

func (e *requestError) Error() string { return e.msg }

func badJSON(field, format string, args ...any) error {
	return &requestError{http.StatusBadRequest, "M_BAD_JSON", field + ": " + fmt.Sprintf(format, args...)}
}

// wireEvent is one element of the request's "events". The room, sender, type
// and state key are read from the PDU itself, so they cannot disagree with it.
type wireEvent struct {
	RoomVersion *string           `json:"room_version"`
	EventID     *string           `json:"event_id"`
	PDU         json.RawMessage   `json:"pdu"`
	StateDeltas []json.RawMessage `json:"state_deltas"`
}

// wireDelta is one element of an event's "state_deltas".
type wireDelta struct {
	Type           *string `json:"type"`
	StateKey       *string `json:"state_key"`
	EventID        *string `json:"event_id"`
	PrevEventID    string  `json:"prev_event_id"`
	Membership     string  `json:"membership"`
	PrevMembership string  `json:"prev_membership"`
}

// pduFields are the PDU keys the event's columns come from.
type pduFields struct {
	RoomID, Sender, Type, StateKey json.RawMessage
}

// readPDUFields reads the PDU's keys exactly as spelt. encoding/json matches
// struct fields case-insensitively, so a PDU with "TYPE" or "Room_ID" would
// have given the event a type or room that remote servers, which read "type"
// and "room_id", never see.
func readPDUFields(pdu json.RawMessage) (pduFields, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(pdu, &keys); err != nil {
		return pduFields{}, err
	}
	return pduFields{RoomID: keys["room_id"], Sender: keys["sender"], Type: keys["type"], StateKey: keys["state_key"]}, nil
}

// decodeRequest reads and checks the body; identifier grammar is left to the
// outbox, whose errors name the field the same way.
func decodeRequest(cfg Config) func(context.Context, *http.Request) (any, error) {
	return func(_ context.Context, r *http.Request) (any, error) {
		if r.ContentLength > cfg.MaxBodyBytes {
			return nil, tooLarge(cfg.MaxBodyBytes)
		}
		body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, cfg.MaxBodyBytes))
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return nil, tooLarge(cfg.MaxBodyBytes)
			}
			return nil, &requestError{http.StatusBadRequest, "M_BAD_JSON", "reading the body: " + err.Error()}
		}
		var top struct {
			Events []json.RawMessage `json:"events"`
		}
		if err := strictUnmarshal(body, &top); err != nil {
			return nil, badJSON("body", "%v", err)
		}
		if top.Events == nil {
			return nil, badJSON("events", "missing")
		}
		if len(top.Events) > cfg.MaxEvents {
			return nil, &requestError{http.StatusBadRequest, "M_INVALID_PARAM", fmt.Sprintf("events: %d events, at most %d per request", len(top.Events), cfg.MaxEvents)}
		}
		req := persistRequest{events: make([]outbox.EventWithDeltas, len(top.Events))}
		seen := make(map[string]int, len(top.Events))
		for i, raw := range top.Events {
			field := "events[" + strconv.Itoa(i) + "]"
			ev, err := decodeEvent(field, raw)
			if err != nil {
				return nil, err
			}
			if j, dup := seen[ev.EventID]; dup {
				return nil, &requestError{http.StatusBadRequest, "M_INVALID_PARAM", fmt.Sprintf("%s.event_id: %q repeats events[%d]", field, ev.EventID, j)}
			}
			seen[ev.EventID] = i
			req.events[i] = ev
		}
		return req, nil
	}
}

func tooLarge(limit int64) error {
	return &requestError{http.StatusRequestEntityTooLarge, "M_TOO_LARGE", fmt.Sprintf("body: larger than %d bytes", limit)}
}

func decodeEvent(field string, raw json.RawMessage) (outbox.EventWithDeltas, error) {
	var out outbox.EventWithDeltas
	var w wireEvent
	if err := strictUnmarshal(raw, &w); err != nil {
		return out, badJSON(field, "%v", err)
	}
	switch {
	case w.RoomVersion == nil:
		return out, badJSON(field+".room_version", "missing")
	case w.EventID == nil:
		return out, badJSON(field+".event_id", "missing")
	case len(w.PDU) == 0 || string(w.PDU) == "null":
		return out, badJSON(field+".pdu", "missing")
	case w.PDU[0] != '{':
		return out, badJSON(field+".pdu", "must be a JSON object")
	}
	p, err := readPDUFields(w.PDU)
	if err != nil {
		return out, badJSON(field+".pdu", "%v", err)
	}
	out.RoomVersion, out.EventID, out.PDU = *w.RoomVersion, *w.EventID, w.PDU
	if out.Sender, err = pduString(field+".pdu.sender", p.Sender); err != nil {
		return out, err
	}
	if out.Type, err = pduString(field+".pdu.type", p.Type); err != nil {
		return out, err
	}
	if len(p.RoomID) == 0 && out.Type == "m.room.create" && out.RoomVersion == "12" && len(out.EventID) > 1 {
		// From room version 12 a create event has no room_id: the room's id is
		// its event id with the other sigil.
		out.RoomID = "!" + out.EventID[1:]
	} else if out.RoomID, err = pduString(field+".pdu.room_id", p.RoomID); err != nil {
		return out, err
	}
	if len(p.StateKey) > 0 {
		sk, err := pduString(field+".pdu.state_key", p.StateKey)
		if err != nil {
			return out, err
		}
		out.StateKey = &sk
	}
	for j, rawDelta := range w.StateDeltas {
		df := field + ".state_deltas[" + strconv.Itoa(j) + "]"
		var d wireDelta
		if err := strictUnmarshal(rawDelta, &d); err != nil {
			return out, badJSON(df, "%v", err)
		}
		switch {
		case d.Type == nil:
			return out, badJSON(df+".type", "missing")
		case d.StateKey == nil:
			return out, badJSON(df+".state_key", "missing")
		case d.EventID == nil:
			return out, badJSON(df+".event_id", `missing ("" for a removed state entry)`)
		}
		out.Deltas = append(out.Deltas, outbox.StateDelta{Type: *d.Type, StateKey: *d.StateKey, EventID: *d.EventID,
			PrevEventID: d.PrevEventID, Membership: d.Membership, PrevMembership: d.PrevMembership})
	}
	return out, nil
}

// pduString decodes a required string key of the PDU.
func pduString(field string, raw json.RawMessage) (string, error) {
	if len(raw) == 0 {
		return "", badJSON(field, "missing")
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", badJSON(field, "must be a string")
	}
	return s, nil
}

// strictUnmarshal decodes one JSON value, refusing unknown fields (a misspelt
// "state_delta" must not silently drop deltas) and trailing data.
func strictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fmt.Errorf("%s must be %s, not %s", te.Field, te.Type, te.Value)
		}
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}
