package mxid_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/federation/mxid"
)

func TestValidateServerName(t *testing.T) {
	for _, ok := range []string{
		"matrix.org", "matrix.org:8888", "1.2.3.4", "1.2.3.4:1234", "[1234:5678::abcd]", "[1234:5678::abcd]:5678",
		"localhost", "a-b.example", "[::1]", "[::1]:8448", "[::ffff:1.2.3.4]", "a.example:1", "a.example:65535",
		strings.Repeat("a", 255), strings.Repeat("a", 255) + ":65535", "999.example", "1.2.3.4.5",
	} {
		if err := mxid.ValidateServerName(ok); err != nil {
			t.Errorf("%s rejected: %v", ok, err)
		}
	}
	for _, bad := range []string{
		"", "matrix.org:", "matrix.org:0", "matrix.org:65536", "matrix.org:80a", "bad name", "a_b.example",
		"[1234::abcd", "[zz::1]", "[::1]x", "256.1.1.1", ":8448", "exa mple.org", strings.Repeat("a", 300),
		"@user:example.org", "ex/ample",
		// Hostile: NUL and control bytes, huge strings, bad ports, odd IPv6 literals.
		"a\x00.example", "a.example\x00", "a.example:84\x0048", "a.example\n", "\x7f", "é.example",
		strings.Repeat("a", 256), strings.Repeat("a", 1<<20), "a.example:-1", "a.example:+80", "a.example:000000",
		"a.example:99999", "a.example:1:2", "a.example: 80", "[::1]:", "[::1]:0", "[::1]:65536", "[]", "[:]",
		"[1.2.3.4]", "[::1%eth0]", "[::1]]", "[[::1]]", "::1", "[" + strings.Repeat("1", 46) + "]", "[::g]",
		"1.2.3.256", "1.2.3.4:", "[::1]:80:80",
	} {
		if err := mxid.ValidateServerName(bad); !errors.Is(err, mxid.ErrInvalidServerName) {
			t.Errorf("%q accepted (err %v)", bad, err)
		}
	}
}

func TestSplitServerName(t *testing.T) {
	for _, tc := range []struct {
		name, in, host string
		port           int
	}{
		{"dns name", "matrix.org", "matrix.org", 0},
		{"dns name with port", "matrix.org:8448", "matrix.org", 8448},
		{"IPv4 with port", "1.2.3.4:80", "1.2.3.4", 80},
		{"IPv6 without brackets in the host", "[::1]:8448", "::1", 8448},
		{"IPv6 without port", "[2001:db8::1]", "2001:db8::1", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host, port, err := mxid.SplitServerName(tc.in)
			if err != nil || host != tc.host || port != tc.port {
				t.Fatalf("SplitServerName(%q) = %q, %d, %v; want %q, %d", tc.in, host, port, err, tc.host, tc.port)
			}
		})
	}
}
