package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fedpipe/fedpipe/federation/canonicaljson"
	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/schema"
)

// ToDevice is a to-device message (the client-server API's PUT
// /sendToDevice): one event type, for devices of users on other servers.
type ToDevice struct {
	// Sender is the local user sending it.
	Sender string
	// Type is the event type of every message, e.g. m.room_key_request.
	Type string
	// MessageID identifies the message: receivers deduplicate by it (with
	// the origin server), so a retried send must reuse it.
	MessageID string
	// Messages maps a user id to a device id ("*": all the user's devices)
	// to that device's message, a JSON object.
	Messages map[string]map[string]json.RawMessage
}

// MaxMessageIDBytes bounds a to-device message id: the EDUs a message is
// split into take its id with a "/n" suffix, and identifiers stay within 255
// bytes.
const MaxMessageIDBytes = 240

// SizeError is the ValidationError of a to-device message for one device
// that no EDU could carry (over schema.MaxEDUBytes): HTTP 413, where other
// validation errors are 400.
type SizeError struct{ *ValidationError }

func (e *SizeError) Unwrap() error { return e.ValidationError }

// eduOverhead is what the transaction adds around an EDU's content
// ({"content":…,"edu_type":"m.direct_to_device"}).
const eduOverhead = len(`{"content":,"edu_type":"m.direct_to_device"}`)

// SendToDevice validates msg and stores, inside tx, what federation must
// deliver of it: one device_federation_outbox row per destination server and
// EDU. A destination's recipients are packed, in user and device order, into
// as few m.direct_to_device EDUs as keep each within schema.MaxEDUBytes; the
// first keeps msg.MessageID, the n-th (from 1) takes MessageID + "/n", so each
// EDU can be deduplicated on its own. Users of origin (our server name) are
// left out: the homeserver delivers those itself. It returns the rows'
// stream positions. A *ValidationError means nothing was written; a
// *SizeError (which is one) names a device whose message alone is too large.
func SendToDevice(ctx context.Context, tx pgx.Tx, origin string, msg ToDevice) ([]int64, error) {
	rows, err := SplitToDevice(origin, msg)
	if err != nil {
		return nil, err
	}
	return insertAll(ctx, tx, len(rows), `INSERT INTO device_federation_outbox (destination, message_id, content) VALUES ($1, $2, $3) RETURNING stream_id`,
		func(i int) []any { return []any{rows[i].Destination, rows[i].MessageID, string(rows[i].Content)} },
		func(i int) string { return "to-device message " + rows[i].MessageID + " for " + rows[i].Destination })
}

// SendToDeviceBatch is SendToDevice in a transaction of its own.
func SendToDeviceBatch(ctx context.Context, pool *pgxpool.Pool, origin string, msg ToDevice) ([]int64, error) {
	var positions []int64
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var err error
		positions, err = SendToDevice(ctx, tx, origin, msg)
		return err
	})
	return positions, err
}

// ToDeviceEDU is one m.direct_to_device EDU for one destination.
type ToDeviceEDU struct {
	Destination, MessageID string
	// Content is the EDU's content, canonical JSON.
	Content json.RawMessage
}

// recipient is one device's message, canonical.
type recipient struct {
	user, device string
	content      []byte
}

// SplitToDevice validates msg and splits it into the EDUs SendToDevice
// stores: per destination (users of origin left out), recipients in user and
// device order, each EDU within schema.MaxEDUBytes.
func SplitToDevice(origin string, msg ToDevice) ([]ToDeviceEDU, error) {
	bad := func(field, reason string) error { return &ValidationError{Field: field, Reason: reason} }
	if err := mxid.CheckUserID(msg.Sender); err != nil {
		return nil, idError("sender", err)
	}
	if origin != "" && mxid.ServerPart(msg.Sender) != origin {
		return nil, bad("sender", quote(msg.Sender)+" is not a user of "+origin)
	}
	if msg.Type == "" {
		return nil, bad("type", "missing")
	}
	if err := schema.CheckIdentifier("type", msg.Type); err != nil {
		return nil, bad("type", err.Error())
	}
	if msg.MessageID == "" || len(msg.MessageID) > MaxMessageIDBytes {
		return nil, bad("message_id", "must be 1 to "+strconv.Itoa(MaxMessageIDBytes)+" bytes")
	}
	if err := schema.CheckIdentifier("message_id", msg.MessageID); err != nil {
		return nil, bad("message_id", err.Error())
	}
	if len(msg.Messages) == 0 {
		return nil, bad("messages", "no recipient")
	}
	byDest := map[string][]recipient{}
	for _, user := range slices.Sorted(maps.Keys(msg.Messages)) {
		field := "messages[" + quote(user) + "]"
		if err := mxid.CheckUserID(user); err != nil {
			return nil, idError(field, err)
		}
		devices := msg.Messages[user]
		if len(devices) == 0 {
			return nil, bad(field, "no device")
		}
		dest := mxid.ServerPart(user)
		for _, device := range slices.Sorted(maps.Keys(devices)) {
			dfield := field + "[" + quote(device) + "]"
			if device == "" {
				return nil, bad(dfield, "empty device id")
			}
			if err := schema.CheckIdentifier(dfield, device); err != nil {
				return nil, bad(dfield, err.Error())
			}
			raw := devices[device]
			if len(raw) > schema.MaxEDUBytes {
				return nil, &SizeError{&ValidationError{Field: dfield, Reason: fmt.Sprintf("message of %d bytes, at most %d", len(raw), schema.MaxEDUBytes)}}
			}
			c, err := canonicaljson.Canonicalize(raw)
			if err != nil || len(c) == 0 || c[0] != '{' {
				return nil, bad(dfield, "must be a JSON object with a canonical form (integers, no floats)")
			}
			if dest != origin {
				byDest[dest] = append(byDest[dest], recipient{user, device, c})
			}
		}
	}
	var rows []ToDeviceEDU
	for _, dest := range slices.Sorted(maps.Keys(byDest)) {
		parts, err := packToDevice(msg, byDest[dest])
		if err != nil {
			return nil, err
		}
		for i, p := range parts {
			id := msg.MessageID
			if i > 0 {
				id += "/" + strconv.Itoa(i)
			}
			content, err := toDeviceContent(msg, id, p)
			if err != nil {
				return nil, err
			}
			rows = append(rows, ToDeviceEDU{Destination: dest, MessageID: id, Content: content})
		}
	}
	return rows, nil
}

// packToDevice splits one destination's recipients, in order, into parts
// whose EDUs stay within schema.MaxEDUBytes. Sizes are exact but for a comma
// per user and device and the longest id suffix a part may take: a part is
// never larger than counted.
func packToDevice(msg ToDevice, rs []recipient) ([][]recipient, error) {
	base := eduOverhead + len(`{"message_id":,"messages":{},"sender":,"type":}`) +
		escaped(msg.MessageID+"/999999") + escaped(msg.Sender) + escaped(msg.Type)
	var parts [][]recipient
	size := 0
	lastUser := ""
	for _, r := range rs {
		user := escaped(r.user) + len(`:{},`)
		device := escaped(r.device) + len(`:,`) + len(r.content)
		if base+user+device > schema.MaxEDUBytes {
			return nil, &SizeError{&ValidationError{Field: "messages[" + quote(r.user) + "][" + quote(r.device) + "]",
				Reason: fmt.Sprintf("message of %d bytes: its EDU would pass %d bytes", len(r.content), schema.MaxEDUBytes)}}
		}
		n := device
		if r.user != lastUser {
			n += user
		}
		if len(parts) == 0 || size+n > schema.MaxEDUBytes {
			parts = append(parts, nil)
			size, n = base, user+device
		}
		parts[len(parts)-1] = append(parts[len(parts)-1], r)
		size += n
		lastUser = r.user
	}
	return parts, nil
}

// escaped is the length of s as a canonical JSON string.
func escaped(s string) int {
	b, _ := canonicaljson.AppendString(nil, s) // s was checked as UTF-8
	return len(b)
}

// toDeviceContent is an m.direct_to_device EDU's content, canonical.
func toDeviceContent(msg ToDevice, id string, rs []recipient) ([]byte, error) {
	messages := map[string]map[string]json.RawMessage{}
	for _, r := range rs {
		if messages[r.user] == nil {
			messages[r.user] = map[string]json.RawMessage{}
		}
		messages[r.user][r.device] = r.content
	}
	e, err := edu.DirectToDevice{Sender: msg.Sender, Type: msg.Type, MessageID: id, Messages: messages}.EDU()
	if err != nil {
		return nil, err
	}
	// encoding/json escapes <, > and & in what it re-encodes: the canonical
	// form is what the sizes were counted for.
	return canonicaljson.Canonicalize(e.Content)
}
