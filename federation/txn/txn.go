// Package txn builds Matrix federation transactions
// (PUT /_matrix/federation/v1/send/{txnId}) and parses their responses. PDU
// bytes and EDU contents pass through untouched: nothing re-encodes an event it
// only forwards.
package txn

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
)

// The specification's limits on one transaction.
const (
	MaxPDUs = 50
	MaxEDUs = 100
)

// ErrFull is returned when adding to a transaction that holds its limit.
var ErrFull = errors.New("transaction is full")

// EDU is an ephemeral data unit.
type EDU struct {
	Type    string          `json:"edu_type"`
	Content json.RawMessage `json:"content"`
}

// Transaction is one federation transaction to one destination.
type Transaction struct {
	// ID is unique per destination and kept when the transaction is retried.
	ID             string
	Origin         string
	Destination    string
	OriginServerTS int64
	PDUs           []json.RawMessage
	EDUs           []EDU
}

// AddPDU adds a PDU, or returns ErrFull at MaxPDUs.
func (t *Transaction) AddPDU(p json.RawMessage) error {
	if len(t.PDUs) >= MaxPDUs {
		return ErrFull
	}
	t.PDUs = append(t.PDUs, p)
	return nil
}

// AddEDU adds an EDU, or returns ErrFull at MaxEDUs.
func (t *Transaction) AddEDU(e EDU) error {
	if len(t.EDUs) >= MaxEDUs {
		return ErrFull
	}
	t.EDUs = append(t.EDUs, e)
	return nil
}

// Empty reports whether the transaction carries nothing.
func (t *Transaction) Empty() bool { return len(t.PDUs) == 0 && len(t.EDUs) == 0 }

// Path is the request path, with the transaction id escaped.
func (t *Transaction) Path() string {
	return "/_matrix/federation/v1/send/" + url.PathEscape(t.ID)
}

// Body encodes the request body. PDUs and EDU contents are copied byte for byte;
// each must be a JSON object.
func (t *Transaction) Body() ([]byte, error) {
	if t.Origin == "" {
		return nil, errors.New("transaction has no origin")
	}
	if len(t.PDUs) > MaxPDUs || len(t.EDUs) > MaxEDUs {
		return nil, fmt.Errorf("transaction holds %d PDUs and %d EDUs, limits are %d and %d", len(t.PDUs), len(t.EDUs), MaxPDUs, MaxEDUs)
	}
	size := 64 + len(t.Origin)
	for _, p := range t.PDUs {
		size += len(p) + 1
	}
	for _, e := range t.EDUs {
		size += len(e.Type) + len(e.Content) + 32
	}
	b := make([]byte, 0, size)
	b = append(b, `{"origin":`...)
	b = appendJSONString(b, t.Origin)
	b = append(b, `,"origin_server_ts":`...)
	b = strconv.AppendInt(b, t.OriginServerTS, 10)
	b = append(b, `,"pdus":[`...)
	for i, p := range t.PDUs {
		if !isObject(p) {
			return nil, fmt.Errorf("pdu %d is not a JSON object", i)
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, p...)
	}
	b = append(b, `],"edus":[`...)
	for i, e := range t.EDUs {
		if !isObject(e.Content) {
			return nil, fmt.Errorf("edu %d (%s) content is not a JSON object", i, e.Type)
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"edu_type":`...)
		b = appendJSONString(b, e.Type)
		b = append(b, `,"content":`...)
		b = append(b, e.Content...)
		b = append(b, '}')
	}
	b = append(b, "]}"...)
	return b, nil
}

// isObject is a cheap check that raw looks like a JSON object; the bytes were
// validated where they entered the system.
func isObject(raw json.RawMessage) bool {
	i, j := 0, len(raw)-1
	for i < len(raw) && (raw[i] == ' ' || raw[i] == '\n' || raw[i] == '\t' || raw[i] == '\r') {
		i++
	}
	for j >= 0 && (raw[j] == ' ' || raw[j] == '\n' || raw[j] == '\t' || raw[j] == '\r') {
		j--
	}
	return i < j && raw[i] == '{' && raw[j] == '}'
}

func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always encodes
	return append(b, q...)
}

// PDUResult is the receiver's verdict on one PDU.
type PDUResult struct {
	Error string `json:"error,omitempty"`
}

// Response is a 200 answer to a transaction: per-PDU results keyed by event id.
type Response struct {
	PDUs map[string]PDUResult `json:"pdus"`
}

// Errors returns the PDUs the receiver rejected, by event id.
func (r Response) Errors() map[string]string {
	out := map[string]string{}
	for id, res := range r.PDUs {
		if res.Error != "" {
			out[id] = res.Error
		}
	}
	return out
}

// ParseResponse parses a 200 response body. A missing "pdus" is an empty result.
func ParseResponse(body []byte) (Response, error) {
	var r Response
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(body, &probe); err != nil || probe == nil {
		return r, fmt.Errorf("transaction response is not a JSON object")
	}
	if raw, ok := probe["pdus"]; ok {
		if err := json.Unmarshal(raw, &r.PDUs); err != nil {
			return r, fmt.Errorf("transaction response has malformed pdus: %w", err)
		}
	}
	if r.PDUs == nil {
		r.PDUs = map[string]PDUResult{}
	}
	return r, nil
}
