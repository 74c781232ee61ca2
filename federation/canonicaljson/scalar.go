package canonicaljson

import (
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// number parses the number at p.pos and appends its canonical form: a plain
// integer. A fraction or exponent is allowed only when the exact value is an
// integer, which is decided on the decimal digits, never through a float.
func (p *parser) number(out []byte) ([]byte, error) {
	start := p.pos
	d, err := p.scanNumber()
	if err != nil {
		return nil, err
	}
	text := p.in[start:p.pos]
	intDigits, fracDigits, scale := d.significant()
	nDigits := int64(len(intDigits) + len(fracDigits))
	if nDigits == 0 {
		return append(out, '0'), nil // zero, however written (also -0)
	}
	if scale < 0 {
		return nil, p.errorf("number %s is not an integer: floats are not allowed in canonical JSON", shorten(text))
	}
	if nDigits+scale > 16 { // 2^53 has 16 digits
		return nil, p.errorf("integer %s is outside ±(2^53−1)", shorten(text))
	}
	n := integer(intDigits, fracDigits, scale)
	if n > MaxSafeInteger {
		return nil, p.errorf("integer %s is outside ±(2^53−1)", shorten(text))
	}
	if d.neg {
		n = -n
	}
	return strconv.AppendInt(out, n, 10), nil
}

// decimal is a JSON number as written: its sign, integer digits, fraction
// digits and exponent.
type decimal struct {
	neg                   bool
	intDigits, fracDigits []byte
	exp                   int64
}

// scanNumber reads the JSON number at p.pos, checking its grammar.
func (p *parser) scanNumber() (decimal, error) {
	var d decimal
	d.neg = p.in[p.pos] == '-'
	if d.neg {
		p.pos++
	}
	intStart := p.pos
	p.digits()
	if p.pos == intStart {
		return d, p.errorf("a number needs digits")
	}
	if p.in[intStart] == '0' && p.pos-intStart > 1 {
		return d, p.errorf("leading zero in number")
	}
	d.intDigits = p.in[intStart:p.pos]
	if p.pos < len(p.in) && p.in[p.pos] == '.' {
		p.pos++
		fracStart := p.pos
		p.digits()
		if p.pos == fracStart {
			return d, p.errorf("a fraction needs digits")
		}
		d.fracDigits = p.in[fracStart:p.pos]
	}
	if p.pos < len(p.in) && (p.in[p.pos] == 'e' || p.in[p.pos] == 'E') {
		p.pos++
		exp, err := p.exponent()
		if err != nil {
			return d, err
		}
		d.exp = exp
	}
	return d, nil
}

// exponent reads an exponent's optional sign and digits, after the 'e'.
func (p *parser) exponent() (int64, error) {
	neg := false
	if p.pos < len(p.in) && (p.in[p.pos] == '+' || p.in[p.pos] == '-') {
		neg = p.in[p.pos] == '-'
		p.pos++
	}
	start := p.pos
	exp := int64(0)
	for ; p.pos < len(p.in) && isDigit(p.in[p.pos]); p.pos++ {
		if exp < 1<<40 { // saturate: any larger exponent is equally out of range
			exp = exp*10 + int64(p.in[p.pos]-'0')
		}
	}
	if p.pos == start {
		return 0, p.errorf("an exponent needs digits")
	}
	if neg {
		exp = -exp
	}
	return exp, nil
}

// significant writes d's value as mantissa × 10^scale, the mantissa being the
// integer and fraction digits without leading or trailing zeros. Both digit
// slices are empty when the value is zero.
func (d decimal) significant() (intDigits, fracDigits []byte, scale int64) {
	intDigits, fracDigits = d.intDigits, d.fracDigits
	scale = d.exp - int64(len(fracDigits))
	for len(fracDigits) > 0 && fracDigits[len(fracDigits)-1] == '0' {
		fracDigits = fracDigits[:len(fracDigits)-1]
		scale++
	}
	if len(fracDigits) == 0 {
		for len(intDigits) > 0 && intDigits[len(intDigits)-1] == '0' {
			intDigits = intDigits[:len(intDigits)-1]
			scale++
		}
	}
	for len(intDigits) > 0 && intDigits[0] == '0' {
		intDigits = intDigits[1:]
	}
	if len(intDigits) == 0 {
		for len(fracDigits) > 0 && fracDigits[0] == '0' {
			fracDigits = fracDigits[1:]
		}
	}
	return intDigits, fracDigits, scale
}

// integer is the value of the mantissa digits times 10^scale; the caller has
// checked that it has at most 16 digits, so it does not overflow.
func integer(intDigits, fracDigits []byte, scale int64) int64 {
	var n int64
	for _, d := range [2][]byte{intDigits, fracDigits} {
		for _, c := range d {
			n = n*10 + int64(c-'0')
		}
	}
	for ; scale > 0; scale-- {
		n *= 10
	}
	return n
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func (p *parser) digits() {
	for p.pos < len(p.in) && isDigit(p.in[p.pos]) {
		p.pos++
	}
}

func shorten(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "…"
	}
	return string(b)
}

// str parses the JSON string at p.pos. With canonical set it appends the
// string's canonical encoding, quotes included; otherwise its decoded bytes.
func (p *parser) str(out []byte, canonical bool) ([]byte, error) {
	p.pos++ // opening quote
	if canonical {
		out = append(out, '"')
	}
	start := p.pos
	for {
		if p.pos >= len(p.in) {
			return nil, p.errorf("unterminated string")
		}
		c := p.in[p.pos]
		switch {
		case c == '"':
			out = append(out, p.in[start:p.pos]...)
			p.pos++
			if canonical {
				out = append(out, '"')
			}
			return out, nil
		case c == '\\':
			out = append(out, p.in[start:p.pos]...)
			r, err := p.escape()
			if err != nil {
				return nil, err
			}
			if canonical {
				out = appendRune(out, r)
			} else {
				out = utf8.AppendRune(out, r)
			}
			start = p.pos
		case c < 0x20:
			return nil, p.errorf("unescaped control character in string")
		case c < utf8.RuneSelf:
			p.pos++
		default:
			r, size := utf8.DecodeRune(p.in[p.pos:])
			if r == utf8.RuneError && size <= 1 {
				return nil, p.errorf("invalid UTF-8 in string")
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
	var r rune
	for _, c := range p.in[p.pos : p.pos+4] {
		var v byte
		switch {
		case c >= '0' && c <= '9':
			v = c - '0'
		case c >= 'a' && c <= 'f':
			v = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			v = c - 'A' + 10
		default:
			return 0, p.errorf("invalid \\u escape")
		}
		r = r<<4 | rune(v)
	}
	p.pos += 4
	return r, nil
}

const hexDigits = "0123456789abcdef"

// appendRune writes one code point with the shortest escape canonical JSON
// allows: only '"', '\\' and control characters are escaped.
func appendRune(out []byte, r rune) []byte {
	switch {
	case r == '"' || r == '\\':
		return append(out, '\\', byte(r))
	case r == '\b':
		return append(out, '\\', 'b')
	case r == '\f':
		return append(out, '\\', 'f')
	case r == '\n':
		return append(out, '\\', 'n')
	case r == '\r':
		return append(out, '\\', 'r')
	case r == '\t':
		return append(out, '\\', 't')
	case r < 0x20:
		return append(out, '\\', 'u', '0', '0', hexDigits[r>>4], hexDigits[r&0xf])
	default:
		return utf8.AppendRune(out, r)
	}
}

// appendString writes the decoded string s canonically, quotes included.
func appendString[S string | []byte](out []byte, s S) []byte {
	out = append(out, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		out = append(out, s[start:i]...)
		out = appendRune(out, rune(c))
		start = i + 1
	}
	out = append(out, s[start:]...)
	return append(out, '"')
}

// AppendString appends s as a canonical JSON string. It fails on invalid
// UTF-8, which has no JSON form.
func AppendString(dst []byte, s string) ([]byte, error) {
	if !utf8.ValidString(s) {
		return nil, fmt.Errorf("%w: invalid UTF-8 in string %q", ErrNotCanonicalizable, s)
	}
	return appendString(dst, s), nil
}
