package mxid

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxIDBytes is the specification's limit on user, room and event IDs.
const MaxIDBytes = 255

// The errors of the strict checks are plain: their text is the reason alone
// (`"@x" must be @localpart:server_name`), for the caller to put after the
// name of the field it checked. A bad server name wraps ErrInvalidServerName.

// CheckUserID checks a user ID against the grammar, accepting the historical
// localpart grammar (printable ASCII except ':') as federation must.
func CheckUserID(id string) error {
	if err := checkSigil(id, '@'); err != nil {
		return err
	}
	local, _, _ := strings.Cut(id[1:], ":")
	for i := 0; i < len(local); i++ {
		if c := local[i]; c < 0x21 || c > 0x7e {
			return errors.New(quote(id) + " has a character outside printable ASCII in its localpart")
		}
	}
	return checkServerPart(id)
}

// CheckRoomID checks a room ID of the given room version: !opaque:server, or
// from room version 12 ! and the create event's reference hash in URL-safe
// unpadded base64.
func CheckRoomID(id, roomVersion string) error {
	if err := checkSigil(id, '!'); err != nil {
		return err
	}
	if roomVersion == "12" {
		return checkHash(id, "-_")
	}
	return checkServerPart(id)
}

// CheckEventID checks an event ID of the given room version: $opaque:server
// in versions 1 and 2, $ and 43 characters of unpadded base64 in version 3,
// of URL-safe unpadded base64 from version 4.
func CheckEventID(id, roomVersion string) error {
	if err := checkSigil(id, '$'); err != nil {
		return err
	}
	switch roomVersion {
	case "1", "2":
		return checkServerPart(id)
	case "3":
		return checkHash(id, "+/")
	default:
		return checkHash(id, "-_")
	}
}

// LooksLikeUserID reports whether id has the shape @localpart:server with a
// colon somewhere after a non-empty localpart's first byte and before the
// last byte. It is the lenient check of records inside the pipeline: "@:a:b"
// passes (a colon follows the first one), "@:ab" does not.
func LooksLikeUserID(id string) bool {
	return len(id) >= 4 && id[0] == '@' && strings.IndexByte(id[2:len(id)-1], ':') >= 0
}

// ServerOf returns the server part of a user ID: everything after the first
// colon, port included ("@alice:example.org:8448" → "example.org:8448"). It
// reports false for a string that does not start with @ or has no server
// part, which can never be a destination. It checks nothing else: strictly
// valid IDs come from CheckUserID.
func ServerOf(userID string) (string, bool) {
	if len(userID) < 3 || userID[0] != '@' {
		return "", false
	}
	i := strings.IndexByte(userID, ':')
	if i < 0 || i == len(userID)-1 {
		return "", false
	}
	return userID[i+1:], true
}

// ServerPart is everything after the first colon of id, "" when it has none.
// It checks nothing: callers hold IDs already checked (CheckUserID,
// LooksLikeUserID) or compare the result with a known server name.
func ServerPart(id string) string {
	_, s, _ := strings.Cut(id, ":")
	return s
}

// checkSigil checks id is present, starts with sigil, is at most MaxIDBytes
// and holds only UTF-8 without NUL or control characters.
func checkSigil(id string, sigil byte) error {
	switch {
	case id == "":
		return errors.New("missing")
	case id[0] != sigil:
		return errors.New(quote(id) + " must start with " + string(sigil))
	case len(id) > MaxIDBytes:
		return fmt.Errorf("longer than %d bytes", MaxIDBytes)
	case !utf8.ValidString(id):
		return errors.New(quote(id) + ": not valid UTF-8")
	}
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case c == 0:
			return fmt.Errorf("%s: holds a NUL byte at %d", quote(id), i)
		case c < 0x20 || c == 0x7f:
			return fmt.Errorf("%s: holds the control character %U at %d", quote(id), rune(c), i)
		}
	}
	return nil
}

// checkServerPart checks a sigil-prefixed ID is "<sigil>local:server_name";
// the ID splits at its first colon because server names may contain colons.
func checkServerPart(id string) error {
	local, server, ok := strings.Cut(id[1:], ":")
	if !ok || local == "" {
		return errors.New(quote(id) + " must be " + id[:1] + "localpart:server_name")
	}
	return ValidateServerName(server)
}

// checkHash checks id is a sigil and 43 characters of unpadded base64 (a
// SHA-256 reference hash) whose two non-alphanumeric characters are extra.
func checkHash(id, extra string) error {
	h := id[1:]
	if len(h) != 43 {
		return errors.New(quote(id) + " must be " + id[:1] + " and a 43-character reference hash")
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(extra, c) >= 0) {
			return errors.New(quote(id) + " has " + quote(string(c)) + ", not in its base64 alphabet")
		}
	}
	return nil
}

// quote is s as a JSON string: readable, and safe for any bytes s holds.
func quote(s string) string { b, _ := json.Marshal(s); return string(b) }
