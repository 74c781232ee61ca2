// Package txn builds Matrix federation transactions
// (PUT /_matrix/federation/v1/send/{txnId}) and parses their responses. PDU
// bytes and EDU contents pass through untouched: nothing re-encodes an event it
// only forwards.
package txn

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"

	"github.com/segmentio/encoding/json"

	"github.com/fedpipe/fedpipe/federation/canonicaljson"
)

// The specification's limits on one transaction.
const (
	MaxPDUs = 50
	MaxEDUs = 100
)

// MaxPDUSize is the spec's limit on one PDU (65536 bytes, as Synapse's
// MAX_PDU_SIZE); receivers reject larger events.
const MaxPDUSize = 65536

// MaxBodySize is the largest request body Synapse accepts on its federation
// listener: 200 × MaxPDUSize (about 12.5 MiB), room for 50 full PDUs and EDUs,
// as its max_request_body_size sets it. There is no 1 MiB limit on inbound
// transactions; a body past this one is refused before it is parsed.
const MaxBodySize = 200 * MaxPDUSize

// ErrFull is returned when adding to a transaction that holds its limit of
// PDUs or EDUs, or whose body would grow past MaxBodySize.
var ErrFull = errors.New("transaction is full")

// ErrTooLarge is wrapped when one PDU or EDU alone is larger than a receiver
// accepts, so it can never be sent and should be dropped.
var ErrTooLarge = errors.New("too large to send")

// ItemError says which PDU or EDU of a transaction cannot be sent and why, so
// the sender can drop that one (errors.As) and send the rest.
type ItemError struct {
	// Kind is "pdu" or "edu".
	Kind string
	// Index is the position in Transaction.PDUs or Transaction.EDUs.
	Index int
	Err   error
}

func (e *ItemError) Error() string { return fmt.Sprintf("%s %d: %v", e.Kind, e.Index, e.Err) }

// Unwrap returns the cause.
func (e *ItemError) Unwrap() error { return e.Err }

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
	// MaxBytes, when set, is the body's budget in place of MaxBodySize: the
	// Add calls answer ErrFull before the body would pass it. It must leave
	// room for one PDU or EDU of the largest size (MinBudget).
	MaxBytes int

	// sized caches sizeEstimate over the PDUs and EDUs counted so far, so
	// that filling a transaction is linear, not quadratic, in its items.
	sized struct{ pdus, edus, bytes int }
}

// MinBudget is the least Transaction.MaxBytes: room for one item of MaxPDUSize.
const MinBudget = 2 * MaxPDUSize

// limit is the body limit: MaxBytes, or MaxBodySize.
func (t *Transaction) limit() int {
	if t.MaxBytes > 0 {
		return min(t.MaxBytes, MaxBodySize)
	}
	return MaxBodySize
}

// AddPDU adds a PDU. It returns ErrFull at MaxPDUs or when the body would
// exceed its limit (MaxBytes or MaxBodySize), and an error wrapping ErrTooLarge for a PDU larger than
// MaxPDUSize.
func (t *Transaction) AddPDU(p json.RawMessage) error {
	if len(p) > MaxPDUSize {
		return fmt.Errorf("pdu of %d bytes, limit %d: %w", len(p), MaxPDUSize, ErrTooLarge)
	}
	if len(t.PDUs) >= MaxPDUs || t.sizeEstimate()+len(p)+1 > t.limit() {
		return ErrFull
	}
	t.PDUs = append(t.PDUs, p)
	return nil
}

// AddEDU adds an EDU. It returns ErrFull at MaxEDUs or when the body would
// exceed its limit (MaxBytes or MaxBodySize), and an error wrapping ErrTooLarge for an EDU that could
// not fit even in an empty transaction.
func (t *Transaction) AddEDU(e EDU) error {
	n := eduSize(e)
	if n+emptySize(t.Origin) > MaxBodySize {
		return fmt.Errorf("%s edu of %d bytes, limit %d: %w", e.Type, n, MaxBodySize, ErrTooLarge)
	}
	if len(t.EDUs) >= MaxEDUs || t.sizeEstimate()+n > t.limit() {
		return ErrFull
	}
	t.EDUs = append(t.EDUs, e)
	return nil
}

// sizeEstimate bounds the encoded body from above (names are assumed to need
// escaping of every byte), so a transaction AddPDU and AddEDU accept always
// encodes within MaxBodySize. Items are counted once, as they are appended;
// a caller that shrinks or rewrites PDUs or EDUs starts the count again.
func (t *Transaction) sizeEstimate() int {
	c := &t.sized
	if c.pdus > len(t.PDUs) || c.edus > len(t.EDUs) {
		*c = struct{ pdus, edus, bytes int }{}
	}
	for ; c.pdus < len(t.PDUs); c.pdus++ {
		c.bytes += len(t.PDUs[c.pdus]) + 1
	}
	for ; c.edus < len(t.EDUs); c.edus++ {
		c.bytes += eduSize(t.EDUs[c.edus])
	}
	return emptySize(t.Origin) + c.bytes
}

func emptySize(origin string) int { return 64 + 6*len(origin) }

func eduSize(e EDU) int { return len(`{"edu_type":,"content":},`) + 6*len(e.Type) + 2 + len(e.Content) }

// Empty reports whether the transaction carries nothing.
func (t *Transaction) Empty() bool { return len(t.PDUs) == 0 && len(t.EDUs) == 0 }

// Path is the request path, with the transaction id escaped.
func (t *Transaction) Path() string {
	return "/_matrix/federation/v1/send/" + url.PathEscape(t.ID)
}

// Body encodes the request body. PDUs and EDU contents are copied byte for
// byte, never re-encoded. Each must be a JSON object that has a canonical form,
// so that a body Body returns can always be signed; a PDU or EDU that cannot
// be sent is reported as an *ItemError.
func (t *Transaction) Body() ([]byte, error) {
	body, _, err := t.Encode()
	return body, err
}

// Encode is Body, and also the body's canonical JSON, which the request
// signature covers (xmatrix.AuthorizationCanonical): each PDU and EDU is
// canonicalised once, as Body checks it anyway, instead of the signer parsing
// the whole body again.
func (t *Transaction) Encode() (body, canonical []byte, err error) {
	if t.Origin == "" {
		return nil, nil, errors.New("transaction has no origin")
	}
	if len(t.PDUs) > MaxPDUs || len(t.EDUs) > MaxEDUs {
		return nil, nil, fmt.Errorf("transaction holds %d PDUs and %d EDUs, limits are %d and %d", len(t.PDUs), len(t.EDUs), MaxPDUs, MaxEDUs)
	}
	size := t.sizeEstimate()
	if canonical, err = t.appendCanonical(make([]byte, 0, size)); err != nil {
		return nil, nil, err
	}
	b := make([]byte, 0, size)
	b = append(b, `{"origin":`...)
	b = appendJSONString(b, t.Origin)
	b = append(b, `,"origin_server_ts":`...)
	b = strconv.AppendInt(b, t.OriginServerTS, 10)
	b = append(b, `,"pdus":[`...)
	for i, p := range t.PDUs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, p...)
	}
	b = append(b, `],"edus":[`...)
	for i, e := range t.EDUs {
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
	if len(b) > MaxBodySize {
		return nil, nil, fmt.Errorf("transaction body of %d bytes, limit %d: %w", len(b), MaxBodySize, ErrTooLarge)
	}
	return b, canonical, nil
}

// appendCanonical appends the body's canonical JSON, checking every PDU and
// EDU on the way: keys sorted, so edus, origin, origin_server_ts, pdus.
func (t *Transaction) appendCanonical(c []byte) ([]byte, error) {
	var err error
	c = append(c, `{"edus":[`...)
	for i, e := range t.EDUs {
		if e.Type == "" {
			return nil, &ItemError{"edu", i, errors.New("no edu_type")}
		}
		if i > 0 {
			c = append(c, ',')
		}
		c = append(c, `{"content":`...)
		if c, err = appendCanonicalObject(c, e.Content); err != nil {
			return nil, &ItemError{"edu", i, fmt.Errorf("%s content: %w", e.Type, err)}
		}
		c = append(c, `,"edu_type":`...)
		if c, err = canonicaljson.AppendString(c, e.Type); err != nil {
			return nil, &ItemError{"edu", i, fmt.Errorf("edu_type: %w", err)}
		}
		c = append(c, '}')
	}
	c = append(c, `],"origin":`...)
	if c, err = canonicaljson.AppendString(c, t.Origin); err != nil {
		return nil, fmt.Errorf("transaction origin: %w", err)
	}
	c = append(c, `,"origin_server_ts":`...)
	c = strconv.AppendInt(c, t.OriginServerTS, 10)
	c = append(c, `,"pdus":[`...)
	for i, p := range t.PDUs {
		if len(p) > MaxPDUSize {
			return nil, &ItemError{"pdu", i, fmt.Errorf("%d bytes, limit %d: %w", len(p), MaxPDUSize, ErrTooLarge)}
		}
		if i > 0 {
			c = append(c, ',')
		}
		if c, err = appendCanonicalObject(c, p); err != nil {
			return nil, &ItemError{"pdu", i, err}
		}
	}
	return append(c, "]}"...), nil
}

// appendCanonicalObject appends raw's canonical form, raw being a JSON object.
func appendCanonicalObject(dst []byte, raw json.RawMessage) ([]byte, error) {
	if !isObject(raw) {
		return dst, errors.New("not a JSON object")
	}
	return canonicaljson.AppendCanonical(dst, raw)
}

// isObject is a cheap first check that raw is a JSON object, for a clearer
// error than the parser's.
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
