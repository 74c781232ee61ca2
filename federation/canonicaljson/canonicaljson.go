// Package canonicaljson encodes JSON the way the Matrix specification's appendix
// "Canonical JSON" defines it, for signing: object keys sorted by code point, no
// insignificant whitespace, UTF-8 with only the escapes the grammar allows,
// integers within ±(2^53−1) and no floats.
package canonicaljson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
)

// ErrNotCanonicalizable is wrapped by every error about input that has no
// canonical form: invalid JSON, non-integer numbers, out-of-range integers,
// invalid UTF-8, duplicate keys or nesting deeper than MaxDepth.
var ErrNotCanonicalizable = errors.New("not canonicalizable JSON")

// MaxDepth bounds nesting, so hostile input cannot exhaust the stack. Synapse
// and the spec's PDU limits make real documents far shallower.
const MaxDepth = 128

// MaxSafeInteger is the largest integer canonical JSON allows (2^53−1).
const MaxSafeInteger = 1<<53 - 1

// Marshal encodes v canonically. v is first encoded with encoding/json, so struct
// tags and json.Marshaler apply; json.RawMessage values are re-encoded canonically.
// encoding/json replaces invalid UTF-8 in Go strings with U+FFFD, so such
// strings are signed as replaced, not rejected.
func Marshal(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encoding value: %w", err)
	}
	return Canonicalize(raw)
}

// Canonicalize re-encodes the JSON document in canonically. Numbers written
// with a fraction or exponent are accepted when their value is an integer in
// range (the spec's own example turns 1e10 into 10000000000); any other
// number is an error.
func Canonicalize(in []byte) ([]byte, error) {
	return AppendCanonical(make([]byte, 0, len(in)), in)
}

// AppendCanonical appends the canonical form of the JSON document in to dst,
// so callers building a larger document avoid a copy. On error dst's contents
// beyond its original length are unspecified.
func AppendCanonical(dst, in []byte) ([]byte, error) {
	box, _ := levelPool.Get().(*[]*level)
	if box == nil {
		box = new([]*level)
	}
	p := parser{in: in, levels: *box}
	defer func() {
		if len(p.levels) > 32 {
			return // deep documents are rare; do not keep their scratch
		}
		for _, lv := range p.levels {
			if cap(lv.buf) > maxPooledScratch {
				lv.buf = nil
			}
		}
		*box = p.levels
		levelPool.Put(box)
	}()
	p.skipSpace()
	out, err := p.value(dst, 0)
	if err != nil {
		return nil, err
	}
	p.skipSpace()
	if p.pos != len(p.in) {
		return nil, p.errorf("unexpected data after the document")
	}
	return out, nil
}

// Check returns nil when in is already exactly canonical, otherwise an error
// saying why not.
func Check(in []byte) error {
	c, err := Canonicalize(in)
	if err != nil {
		return err
	}
	if !bytes.Equal(c, in) {
		i := 0
		for i < len(c) && i < len(in) && c[i] == in[i] {
			i++
		}
		return fmt.Errorf("%w: valid JSON but not in canonical form (first difference at offset %d)", ErrNotCanonicalizable, i)
	}
	return nil
}

type parser struct {
	in  []byte
	pos int
	// levels[d] is scratch space for the object being parsed at depth d: its
	// decoded keys and canonical member values, sorted before they are copied
	// out. Only one object per depth is open at a time, so the space is reused.
	levels []*level
}

// levelPool keeps parsers' scratch levels between calls: signing a transaction
// canonicalizes every PDU, and fresh scratch for each dominated the cost.
var levelPool sync.Pool

// maxPooledScratch bounds the scratch a pooled level keeps: a whole transaction
// body passes through level 0, and 12 MiB should not stay cached.
const maxPooledScratch = 256 << 10

type level struct {
	buf     []byte
	members []member
}

// member locates one key and its canonical value in a level's buf.
type member struct {
	keyStart, keyEnd, valEnd int
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("%w: offset %d: %s", ErrNotCanonicalizable, p.pos, fmt.Sprintf(format, args...))
}

func (p *parser) skipSpace() {
	for p.pos < len(p.in) {
		switch p.in[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *parser) value(out []byte, depth int) ([]byte, error) {
	if depth > MaxDepth {
		return nil, p.errorf("nesting deeper than %d", MaxDepth)
	}
	if p.pos >= len(p.in) {
		return nil, p.errorf("unexpected end of input")
	}
	switch c := p.in[p.pos]; {
	case c == '{':
		return p.object(out, depth)
	case c == '[':
		return p.array(out, depth)
	case c == '"':
		return p.str(out, true)
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number(out)
	default:
		for _, lit := range [...]string{"true", "false", "null"} {
			if bytes.HasPrefix(p.in[p.pos:], []byte(lit)) {
				p.pos += len(lit)
				return append(out, lit...), nil
			}
		}
		return nil, p.errorf("unexpected character %q", c)
	}
}

func (p *parser) object(out []byte, depth int) ([]byte, error) {
	p.pos++ // {
	p.skipSpace()
	if p.pos < len(p.in) && p.in[p.pos] == '}' {
		p.pos++
		return append(out, "{}"...), nil
	}
	for len(p.levels) <= depth {
		p.levels = append(p.levels, &level{})
	}
	lv := p.levels[depth]
	lv.buf, lv.members = lv.buf[:0], lv.members[:0]
	for {
		p.skipSpace()
		if p.pos >= len(p.in) || p.in[p.pos] != '"' {
			return nil, p.errorf("expected an object key")
		}
		var m member
		var err error
		m.keyStart = len(lv.buf)
		if lv.buf, err = p.str(lv.buf, false); err != nil {
			return nil, err
		}
		m.keyEnd = len(lv.buf)
		p.skipSpace()
		if p.pos >= len(p.in) || p.in[p.pos] != ':' {
			return nil, p.errorf("expected ':' after key %q", lv.buf[m.keyStart:m.keyEnd])
		}
		p.pos++
		p.skipSpace()
		if lv.buf, err = p.value(lv.buf, depth+1); err != nil {
			return nil, err
		}
		m.valEnd = len(lv.buf)
		lv.members = append(lv.members, m)
		p.skipSpace()
		if p.pos >= len(p.in) {
			return nil, p.errorf("unterminated object")
		}
		if p.in[p.pos] == ',' {
			p.pos++
			continue
		}
		if p.in[p.pos] != '}' {
			return nil, p.errorf("expected ',' or '}' in object")
		}
		p.pos++
		break
	}
	buf := lv.buf
	key := func(m member) []byte { return buf[m.keyStart:m.keyEnd] }
	// Byte order of UTF-8 strings is code point order, as the spec requires.
	slices.SortFunc(lv.members, func(a, b member) int { return bytes.Compare(key(a), key(b)) })
	out = append(out, '{')
	for i, m := range lv.members {
		if i > 0 {
			if bytes.Equal(key(lv.members[i-1]), key(m)) {
				return nil, fmt.Errorf("%w: duplicate object key %q", ErrNotCanonicalizable, key(m))
			}
			out = append(out, ',')
		}
		out = appendString(out, key(m))
		out = append(out, ':')
		out = append(out, buf[m.keyEnd:m.valEnd]...)
	}
	return append(out, '}'), nil
}

func (p *parser) array(out []byte, depth int) ([]byte, error) {
	p.pos++ // [
	out = append(out, '[')
	p.skipSpace()
	if p.pos < len(p.in) && p.in[p.pos] == ']' {
		p.pos++
		return append(out, ']'), nil
	}
	for first := true; ; first = false {
		if !first {
			out = append(out, ',')
		}
		p.skipSpace()
		var err error
		if out, err = p.value(out, depth+1); err != nil {
			return nil, err
		}
		p.skipSpace()
		if p.pos >= len(p.in) {
			return nil, p.errorf("unterminated array")
		}
		if p.in[p.pos] == ',' {
			p.pos++
			continue
		}
		if p.in[p.pos] != ']' {
			return nil, p.errorf("expected ',' or ']' in array")
		}
		p.pos++
		return append(out, ']'), nil
	}
}
