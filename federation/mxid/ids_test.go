package mxid_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/federation/mxid"
)

const hash = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456" // 43 characters

func TestCheckUserID(t *testing.T) {
	for _, tc := range []struct {
		name, id string
		ok       bool
	}{
		{"plain", "@alice:hs.test", true},
		{"port", "@alice:hs.test:8448", true},
		{"IPv6 server", "@alice:[::1]:8448", true},
		{"historical localpart", "@Al!ce#=~:hs.test", true},
		{"255 bytes", "@" + strings.Repeat("a", 246) + ":hs.test", true},
		{"empty", "", false},
		{"no sigil", "alice:hs.test", false},
		{"room sigil", "!alice:hs.test", false},
		{"no server", "@alice", false},
		{"empty server", "@alice:", false},
		{"empty localpart", "@:hs.test", false},
		{"empty localpart, colon after", "@:a:hs.test", false},
		{"space in localpart", "@al ice:hs.test", false},
		{"non-ASCII localpart", "@alicé:hs.test", false},
		{"bad server", "@alice:bad_server!", false},
		{"bad port", "@alice:hs.test:0", false},
		{"bad IPv6", "@alice:[::1", false},
		{"256 bytes", "@" + strings.Repeat("a", 247) + ":hs.test", false},
		{"huge", "@" + strings.Repeat("a", 1<<20) + ":hs.test", false},
		{"NUL in localpart", "@bob\x00:hs.test", false},
		{"NUL at the end", "@bob:hs.test\x00", false},
		{"control character", "@a\x07:hs.test", false},
		{"DEL", "@a\x7f:hs.test", false},
		{"invalid UTF-8", "@a\xff:hs.test", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := mxid.CheckUserID(tc.id); (err == nil) != tc.ok {
				t.Fatalf("CheckUserID(%q) = %v, want ok %v", tc.id, err, tc.ok)
			}
		})
	}
}

func TestCheckRoomID(t *testing.T) {
	for _, tc := range []struct {
		name, id, version string
		ok                bool
	}{
		{"server room id", "!room:hs.test", "10", true},
		{"server room id in version 1", "!room:hs.test:8448", "1", true},
		{"hash room id in version 12", "!" + hash, "12", true},
		{"hash room id with URL-safe characters", "!" + hash[:41] + "-_", "12", true},
		{"no server", "!room", "10", false},
		{"empty opaque part", "!:hs.test", "10", false},
		{"user sigil", "@room:hs.test", "10", false},
		{"server room id in version 12", "!room:hs.test", "12", false},
		{"standard base64 in version 12", "!" + hash[:41] + "+/", "12", false},
		{"short hash", "!" + hash[1:], "12", false},
		{"NUL", "!ro\x00om:hs.test", "10", false},
		{"newline", "!room\n:hs.test", "10", false},
		{"huge", "!" + strings.Repeat("r", 300) + ":hs.test", "10", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := mxid.CheckRoomID(tc.id, tc.version); (err == nil) != tc.ok {
				t.Fatalf("CheckRoomID(%q, %s) = %v, want ok %v", tc.id, tc.version, err, tc.ok)
			}
		})
	}
}

func TestCheckEventID(t *testing.T) {
	for _, tc := range []struct {
		name, id, version string
		ok                bool
	}{
		{"hash in version 10", "$" + hash, "10", true},
		{"URL-safe hash in version 4", "$" + hash[:41] + "-_", "4", true},
		{"standard base64 in version 3", "$" + hash[:41] + "+/", "3", true},
		{"server event id in version 1", "$abc:hs.test", "1", true},
		{"server event id in version 2", "$abc:hs.test", "2", true},
		{"server event id in version 10", "$abc:hs.test", "10", false},
		{"standard base64 in version 10", "$" + hash[:41] + "+/", "10", false},
		{"URL-safe base64 in version 3", "$" + hash[:41] + "-_", "3", false},
		{"hash in version 1", "$" + hash, "1", false},
		{"padded hash", "$" + hash + "=", "10", false},
		{"missing", "", "10", false},
		{"room sigil", "!" + hash, "10", false},
		{"NUL in hash", "$" + hash[:42] + "\x00", "10", false},
		{"bad server in version 1", "$abc:hs test", "1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := mxid.CheckEventID(tc.id, tc.version); (err == nil) != tc.ok {
				t.Fatalf("CheckEventID(%q, %s) = %v, want ok %v", tc.id, tc.version, err, tc.ok)
			}
		})
	}
}

// TestStrictErrorsSayWhy: the text of a strict check's error is the reason
// callers show after the field's name, and a bad server name stays typed.
func TestStrictErrorsSayWhy(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{mxid.CheckUserID(""), "missing"},
		{mxid.CheckUserID("alice:hs.test"), `"alice:hs.test" must start with @`},
		{mxid.CheckUserID("@" + strings.Repeat("a", 300)), "longer than 255 bytes"},
		{mxid.CheckUserID("@a\x00:hs.test"), `"@a\u0000:hs.test": holds a NUL byte at 2`},
		{mxid.CheckUserID("@a\x07:hs.test"), `"@a\u0007:hs.test": holds the control character U+0007 at 2`},
		{mxid.CheckUserID("@al ice:hs.test"), `"@al ice:hs.test" has a character outside printable ASCII in its localpart`},
		{mxid.CheckUserID("@alice"), `"@alice" must be @localpart:server_name`},
		{mxid.CheckRoomID("!abc", "12"), `"!abc" must be ! and a 43-character reference hash`},
		{mxid.CheckEventID("$"+hash[:42]+"+", "10"), `"$` + hash[:42] + `+" has "+", not in its base64 alphabet`},
	} {
		if tc.err == nil || tc.err.Error() != tc.want {
			t.Errorf("error %v, want %s", tc.err, tc.want)
		}
	}
	if err := mxid.CheckUserID("@alice:bad_server"); !errors.Is(err, mxid.ErrInvalidServerName) {
		t.Errorf("bad server gave %v, want ErrInvalidServerName", err)
	}
}

// TestLenientUserID pins the lenient checks, and where they differ from each
// other and from the strict one (each caller keeps what it always accepted).
func TestLenientUserID(t *testing.T) {
	for _, tc := range []struct {
		name, id    string
		looks       bool
		server      string
		hasServer   bool
		part        string
		strictValid bool
	}{
		{"plain user", "@alice:example.org", true, "example.org", true, "example.org", true},
		{"port kept", "@alice:example.org:8448", true, "example.org:8448", true, "example.org:8448", true},
		{"IPv6 literal", "@a:[::1]:8448", true, "[::1]:8448", true, "[::1]:8448", true},
		{"shortest", "@a:b", true, "b", true, "b", true},
		{"no sigil", "alice:example.org", false, "", false, "example.org", false},
		{"no sigil, short", ":x", false, "", false, "x", false},
		{"no server", "@alice", false, "", false, "", false},
		{"empty server", "@alice:", false, "", false, "", false},
		{"empty", "", false, "", false, "", false},
		{"sigil only", "@", false, "", false, "", false},
		{"empty localpart", "@:ab", false, "ab", true, "ab", false},
		{"empty localpart, short", "@:b", false, "b", true, "b", false},
		{"empty localpart, colon after", "@:a:b", true, "a:b", true, "a:b", false},
		{"bad server grammar", "@a:b_c", true, "b_c", true, "b_c", false},
		{"NUL in server", "@a:b\x00", true, "b\x00", true, "b\x00", false},
		{"two trailing colons", "@a::", true, ":", true, ":", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := mxid.LooksLikeUserID(tc.id); got != tc.looks {
				t.Errorf("LooksLikeUserID(%q) = %v, want %v", tc.id, got, tc.looks)
			}
			if got, ok := mxid.ServerOf(tc.id); got != tc.server || ok != tc.hasServer {
				t.Errorf("ServerOf(%q) = %q, %v; want %q, %v", tc.id, got, ok, tc.server, tc.hasServer)
			}
			if got := mxid.ServerPart(tc.id); got != tc.part {
				t.Errorf("ServerPart(%q) = %q, want %q", tc.id, got, tc.part)
			}
			if err := mxid.CheckUserID(tc.id); (err == nil) != tc.strictValid {
				t.Errorf("CheckUserID(%q) = %v, want ok %v", tc.id, err, tc.strictValid)
			}
		})
	}
}
