// Package xmatrix implements Matrix request authentication: the signed
// `Authorization: X-Matrix origin=…,destination=…,key=…,sig=…` header of every
// server-server request, its parser and its verification.
package xmatrix

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/fedpipe/fedpipe/federation/canonicaljson"
	"github.com/fedpipe/fedpipe/federation/signing"
)

// ErrMalformed is wrapped by Parse errors.
var ErrMalformed = errors.New("malformed X-Matrix authorization")

// MaxHeaderLength bounds what Parse reads; real headers are a few hundred bytes.
const MaxHeaderLength = 8 << 10

// Header is a parsed X-Matrix authorization.
type Header struct {
	Origin, Destination, KeyID, Signature string
}

// RequestBytes returns the canonical JSON a request signature covers:
// {"content","destination","method","origin","uri"} with content omitted when
// the request has no body. It is written directly, keys already in canonical
// order, so a full transaction body is parsed once rather than encoded twice.
func RequestBytes(method, uri, origin, destination string, content []byte) ([]byte, error) {
	b := make([]byte, 0, len(content)+len(method)+len(uri)+len(origin)+len(destination)+64)
	b = append(b, '{')
	if len(content) > 0 {
		var err error
		b = append(b, `"content":`...)
		if b, err = canonicaljson.AppendCanonical(b, content); err != nil {
			return nil, fmt.Errorf("encoding request body for signing: %w", err)
		}
		b = append(b, ',')
	}
	return appendRequestFields(b, method, uri, origin, destination)
}

// requestBytes is RequestBytes with the content already in canonical form.
func requestBytes(method, uri, origin, destination string, canonical []byte) ([]byte, error) {
	b := make([]byte, 0, len(canonical)+len(method)+len(uri)+len(origin)+len(destination)+64)
	b = append(b, '{')
	if len(canonical) > 0 {
		b = append(b, `"content":`...)
		b = append(b, canonical...)
		b = append(b, ',')
	}
	return appendRequestFields(b, method, uri, origin, destination)
}

// appendRequestFields appends the signed request's fields after content, in
// canonical order, and closes the object.
func appendRequestFields(b []byte, method, uri, origin, destination string) ([]byte, error) {
	var err error
	for i, f := range [...]struct{ name, value string }{
		{`"destination":`, destination}, {`"method":`, method}, {`"origin":`, origin}, {`"uri":`, uri},
	} {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, f.name...)
		if b, err = canonicaljson.AppendString(b, f.value); err != nil {
			return nil, fmt.Errorf("encoding request for signing: %w", err)
		}
	}
	return append(b, '}'), nil
}

// Authorization signs a request and returns the Authorization header value.
// uri is the path and query exactly as sent.
func Authorization(origin, destination string, k *signing.Key, method, uri string, content []byte) (string, error) {
	msg, err := RequestBytes(method, uri, origin, destination, content)
	if err != nil {
		return "", err
	}
	return header(origin, destination, k, msg), nil
}

// AuthorizationCanonical is Authorization for a request whose body's
// canonical JSON the caller already has (txn.Transaction.Encode): it must be
// exactly canonicaljson.AppendCanonical of the body sent, or the receiver
// refuses the signature. Nil for a request without a body.
func AuthorizationCanonical(origin, destination string, k *signing.Key, method, uri string, canonical []byte) (string, error) {
	msg, err := requestBytes(method, uri, origin, destination, canonical)
	if err != nil {
		return "", err
	}
	return header(origin, destination, k, msg), nil
}

func header(origin, destination string, k *signing.Key, msg []byte) string {
	sig := base64.RawStdEncoding.EncodeToString(k.Sign(msg))
	return fmt.Sprintf(`X-Matrix origin="%s",destination="%s",key="%s",sig="%s"`, quote(origin), quote(destination), quote(k.ID), sig)
}

func quote(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s)
}

// Verify checks h's signature over the request with the origin's public key.
// When h names a destination it must be ours.
func Verify(h Header, method, uri, destination string, content []byte, pub ed25519.PublicKey) error {
	if h.Destination != "" && h.Destination != destination {
		return fmt.Errorf("%w: request is for %q, not %q", signing.ErrBadSignature, h.Destination, destination)
	}
	msg, err := RequestBytes(method, uri, h.Origin, destination, content)
	if err != nil {
		return err
	}
	return signing.VerifyBytes(pub, msg, h.Signature)
}

// Parse reads an Authorization header value. It follows the specification: the
// scheme is case-insensitive, parameters are comma-separated name=value pairs
// whose names are case-insensitive and whose values are tokens or quoted strings
// with backslash escapes; unknown parameters are ignored, repeated ones rejected;
// origin, key and sig are required (destination is optional, as older servers
// omit it).
func Parse(value string) (Header, error) {
	var h Header
	if len(value) > MaxHeaderLength {
		return h, fmt.Errorf("%w: header longer than %d bytes", ErrMalformed, MaxHeaderLength)
	}
	scheme, rest, _ := strings.Cut(strings.TrimLeft(value, " \t"), " ")
	if !strings.EqualFold(scheme, "X-Matrix") {
		return h, fmt.Errorf("%w: scheme %q is not X-Matrix", ErrMalformed, scheme)
	}
	seen := map[string]bool{}
	s := rest
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			break
		}
		eq := strings.IndexByte(s, '=')
		if eq <= 0 {
			return h, fmt.Errorf("%w: expected name=value at %q", ErrMalformed, truncate(s))
		}
		name := strings.ToLower(strings.TrimSpace(s[:eq]))
		if !isToken(name) {
			return h, fmt.Errorf("%w: invalid parameter name %q", ErrMalformed, name)
		}
		s = strings.TrimLeft(s[eq+1:], " \t")
		var val string
		var err error
		if strings.HasPrefix(s, `"`) {
			val, s, err = quotedString(s)
			if err != nil {
				return h, err
			}
		} else {
			end := strings.IndexAny(s, ", \t")
			if end < 0 {
				end = len(s)
			}
			val, s = s[:end], s[end:]
			if val == "" {
				return h, fmt.Errorf("%w: empty value for %s", ErrMalformed, name)
			}
			if strings.ContainsAny(val, `"\\`) {
				return h, fmt.Errorf("%w: quote or backslash in the unquoted value of %s", ErrMalformed, name)
			}
			if i := strings.IndexFunc(val, isControl); i >= 0 {
				// Refused as in a quoted value: a header that parses must
				// render and parse again to itself.
				return h, fmt.Errorf("%w: control character in the unquoted value of %s", ErrMalformed, name)
			}
		}
		if seen[name] {
			return h, fmt.Errorf("%w: parameter %s given twice", ErrMalformed, name)
		}
		seen[name] = true
		switch name {
		case "origin":
			h.Origin = val
		case "destination":
			h.Destination = val
		case "key":
			h.KeyID = val
		case "sig":
			h.Signature = val
		}
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			break
		}
		if s[0] != ',' {
			return h, fmt.Errorf("%w: expected ',' at %q", ErrMalformed, truncate(s))
		}
		s = s[1:]
	}
	for _, req := range []struct{ name, v string }{{"origin", h.Origin}, {"key", h.KeyID}, {"sig", h.Signature}} {
		if req.v == "" {
			return h, fmt.Errorf("%w: missing %s", ErrMalformed, req.name)
		}
	}
	return h, nil
}

// quotedString parses a leading quoted-string and returns its value and the rest.
func quotedString(s string) (string, string, error) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return b.String(), s[i+1:], nil
		case '\\':
			if i+1 >= len(s) {
				return "", "", fmt.Errorf("%w: unterminated escape in quoted value", ErrMalformed)
			}
			i++
			b.WriteByte(s[i])
		default:
			if c != '\t' && isControl(rune(c)) {
				return "", "", fmt.Errorf("%w: control character in quoted value", ErrMalformed)
			}
			b.WriteByte(c)
		}
	}
	return "", "", fmt.Errorf("%w: unterminated quoted value", ErrMalformed)
}

// isControl reports an ASCII control character (tab included).
func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?={}`, c) >= 0 {
			return false
		}
	}
	return s != ""
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
