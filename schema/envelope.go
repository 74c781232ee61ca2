package schema

import (
	"fmt"

	"github.com/segmentio/encoding/json"
)

// encoding/json compacts and HTML-escapes json.RawMessage fields when it
// marshals them, which would change a PDU's bytes ("<" becomes "\u003c"). The
// envelope is therefore encoded without the raw field, which is then spliced in
// byte for byte. Producers use these Marshal methods, never json.Marshal.

// Marshal encodes the record with its PDU bytes untouched.
// A state delta removing an m.room.member entry carries "membership":"" (the
// contract says the new membership is "" when removed), which omitempty would
// drop.
func (r RoomRecord) Marshal() ([]byte, error) {
	if r.Kind == KindStateDelta && r.Type == "m.room.member" && r.Membership == "" {
		return spliceRaw(r, "membership", json.RawMessage(`""`))
	}
	raw := r.PDU
	r.PDU = nil
	return spliceRaw(r, "pdu", raw)
}

// Marshal encodes the record with its PDU or EDU content bytes untouched.
func (r OutboundRecord) Marshal() ([]byte, error) {
	name, raw := "pdu", r.PDU
	if r.Kind == KindEDU || r.Kind == KindToDevice || r.Kind == KindDeviceList {
		name, raw = "content", r.Content
	}
	r.PDU, r.Content = nil, nil
	return spliceRaw(r, name, raw)
}

// envelopeBytes is about the most an envelope takes without its raw field
// (a room record's IDs, type and state key): spliceRaw sizes its one buffer
// for it and the raw bytes.
const envelopeBytes = 384

func spliceRaw(v any, field string, raw json.RawMessage) ([]byte, error) {
	// The flags of an Encoder with SetEscapeHTML(false), without its
	// newline; appended straight into the record's buffer, not through an
	// Encoder's and a bytes.Buffer's copies.
	b, err := json.Append(make([]byte, 0, envelopeBytes+len(field)+len(raw)+4), v, json.SortMapKeys)
	if err != nil {
		return nil, err
	}
	if len(raw) == 0 {
		return b, nil
	}
	if !json.Valid(raw) {
		return nil, fmt.Errorf("%s is not valid JSON", field)
	}
	b = append(b[:len(b)-1], `,"`...) // without the closing brace
	b = append(b, field...)
	b = append(b, `":`...)
	b = append(b, raw...)
	return append(b, '}'), nil
}
