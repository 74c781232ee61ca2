package schema

import (
	"bytes"
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

func spliceRaw(v any, field string, raw json.RawMessage) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	b := bytes.TrimRight(buf.Bytes(), "\n")
	if len(raw) == 0 {
		return b, nil
	}
	if !json.Valid(raw) {
		return nil, fmt.Errorf("%s is not valid JSON", field)
	}
	out := make([]byte, 0, len(b)+len(field)+len(raw)+4)
	out = append(out, b[:len(b)-1]...) // without the closing brace
	out = append(out, `,"`+field+`":`...)
	out = append(out, raw...)
	return append(out, '}'), nil
}
