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
	"sort"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// ErrNotCanonicalizable is wrapped by every error about input that has no
// canonical form: invalid JSON, floats, out-of-range integers, invalid UTF-8,
// duplicate keys or nesting deeper than MaxDepth.
var ErrNotCanonicalizable = errors.New("not canonicalizable JSON")

// MaxDepth bounds nesting, so hostile input cannot exhaust the stack. Synapse
// and the spec's PDU limits make real documents far shallower.
const MaxDepth = 128

// MaxSafeInteger is the largest integer canonical JSON allows (2^53−1).
const MaxSafeInteger = 1<<53 - 1

// Marshal encodes v canonically. v is first encoded with encoding/json, so struct
// tags and json.Marshaler apply; json.RawMessage values are re-encoded canonically.
func Marshal(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encoding value: %w", err)
	}
	return Canonicalize(raw)
}

// Canonicalize re-encodes the JSON document in canonically.
func Canonicalize(in []byte) ([]byte, error) {
	p := parser{in: in}
	out := make([]byte, 0, len(in))
	p.skipSpace()
	out, err := p.value(out, 0)
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
		return fmt.Errorf("%w: valid JSON but not in canonical form", ErrNotCanonicalizable)
	}
	return nil
}

type parser struct {
	in  []byte
	pos int
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
		s, err := p.str()
		if err != nil {
			return nil, err
		}
		return appendString(out, s), nil
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number(out)
	default:
		for _, lit := range []string{"true", "false", "null"} {
			if bytes.HasPrefix(p.in[p.pos:], []byte(lit)) {
				p.pos += len(lit)
				return append(out, lit...), nil
			}
		}
		return nil, p.errorf("unexpected character %q", c)
	}
}

type member struct {
	key   string
	value []byte
}

func (p *parser) object(out []byte, depth int) ([]byte, error) {
	p.pos++ // {
	var members []member
	p.skipSpace()
	if p.pos < len(p.in) && p.in[p.pos] == '}' {
		p.pos++
		return append(out, "{}"...), nil
	}
	for {
		p.skipSpace()
		if p.pos >= len(p.in) || p.in[p.pos] != '"' {
			return nil, p.errorf("expected an object key")
		}
		key, err := p.str()
		if err != nil {
			return nil, err
		}
		p.skipSpace()
		if p.pos >= len(p.in) || p.in[p.pos] != ':' {
			return nil, p.errorf("expected ':' after key %q", key)
		}
		p.pos++
		p.skipSpace()
		v, err := p.value(nil, depth+1)
		if err != nil {
			return nil, err
		}
		members = append(members, member{key, v})
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
	// Byte order of UTF-8 strings is code point order, as the spec requires.
	sort.Slice(members, func(i, j int) bool { return members[i].key < members[j].key })
	out = append(out, '{')
	for i, m := range members {
		if i > 0 {
			if members[i-1].key == m.key {
				return nil, fmt.Errorf("%w: duplicate object key %q", ErrNotCanonicalizable, m.key)
			}
			out = append(out, ',')
		}
		out = appendString(out, m.key)
		out = append(out, ':')
		out = append(out, m.value...)
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

func (p *parser) number(out []byte) ([]byte, error) {
	start := p.pos
	if p.in[p.pos] == '-' {
		p.pos++
	}
	digits := p.pos
	for p.pos < len(p.in) && p.in[p.pos] >= '0' && p.in[p.pos] <= '9' {
		p.pos++
	}
	if p.pos == digits {
		return nil, p.errorf("a number needs digits")
	}
	if p.in[digits] == '0' && p.pos-digits > 1 {
		return nil, p.errorf("leading zero in number")
	}
	if p.pos < len(p.in) && (p.in[p.pos] == '.' || p.in[p.pos] == 'e' || p.in[p.pos] == 'E') {
		return nil, p.errorf("floats are not allowed in canonical JSON")
	}
	n, err := strconv.ParseInt(string(p.in[start:p.pos]), 10, 64)
	if err != nil || n > MaxSafeInteger || n < -MaxSafeInteger {
		return nil, p.errorf("integer %s is outside ±(2^53−1)", p.in[start:p.pos])
	}
	return strconv.AppendInt(out, n, 10), nil // also turns -0 into 0
}

// str parses a JSON string at p.pos and returns its value.
func (p *parser) str() (string, error) {
	p.pos++ // opening quote
	var buf []byte
	start := p.pos
	for {
		if p.pos >= len(p.in) {
			return "", p.errorf("unterminated string")
		}
		c := p.in[p.pos]
		switch {
		case c == '"':
			buf = append(buf, p.in[start:p.pos]...)
			p.pos++
			return string(buf), nil
		case c == '\\':
			buf = append(buf, p.in[start:p.pos]...)
			r, err := p.escape()
			if err != nil {
				return "", err
			}
			buf = utf8.AppendRune(buf, r)
			start = p.pos
		case c < 0x20:
			return "", p.errorf("unescaped control character in string")
		case c < utf8.RuneSelf:
			p.pos++
		default:
			r, size := utf8.DecodeRune(p.in[p.pos:])
			if r == utf8.RuneError && size <= 1 {
				return "", p.errorf("invalid UTF-8 in string")
			}
			p.pos += size
		}
	}
}

func (p *parser) escape() (rune, error) {
	if p.pos+1 >= len(p.in) {
		return 0, p.errorf("unterminated escape")
	}
	c := p.in[p.pos+1]
	p.pos += 2
	switch c {
	case '"', '\\', '/':
		return rune(c), nil
	case 'b':
		return '\b', nil
	case 'f':
		return '\f', nil
	case 'n':
		return '\n', nil
	case 'r':
		return '\r', nil
	case 't':
		return '\t', nil
	case 'u':
		r, err := p.hex4()
		if err != nil {
			return 0, err
		}
		if utf16.IsSurrogate(r) {
			if r >= 0xdc00 || p.pos+1 >= len(p.in) || p.in[p.pos] != '\\' || p.in[p.pos+1] != 'u' {
				return 0, p.errorf("unpaired UTF-16 surrogate")
			}
			p.pos += 2
			r2, err := p.hex4()
			if err != nil {
				return 0, err
			}
			if r = utf16.DecodeRune(r, r2); r == utf8.RuneError {
				return 0, p.errorf("invalid UTF-16 surrogate pair")
			}
		}
		return r, nil
	default:
		return 0, p.errorf("invalid escape \\%c", c)
	}
}

func (p *parser) hex4() (rune, error) {
	if p.pos+4 > len(p.in) {
		return 0, p.errorf("short \\u escape")
	}
	n, err := strconv.ParseUint(string(p.in[p.pos:p.pos+4]), 16, 32)
	if err != nil {
		return 0, p.errorf("invalid \\u escape")
	}
	p.pos += 4
	return rune(n), nil
}

const hexDigits = "0123456789abcdef"

// appendString writes s with the shortest escapes canonical JSON allows.
func appendString(out []byte, s string) []byte {
	out = append(out, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		out = append(out, s[start:i]...)
		switch c {
		case '"', '\\':
			out = append(out, '\\', c)
		case '\b':
			out = append(out, '\\', 'b')
		case '\f':
			out = append(out, '\\', 'f')
		case '\n':
			out = append(out, '\\', 'n')
		case '\r':
			out = append(out, '\\', 'r')
		case '\t':
			out = append(out, '\\', 't')
		default:
			out = append(out, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	out = append(out, s[start:]...)
	return append(out, '"')
}
