package mxid

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// ErrInvalidServerName is wrapped by ValidateServerName errors.
var ErrInvalidServerName = errors.New("invalid server name")

// MaxServerNameLength is the longest server name accepted; the specification
// recommends 230 and the grammar allows a 255-character DNS name plus a port.
const MaxServerNameLength = 255 + 6

// ValidateServerName checks name against the specification's grammar:
// hostname [ ":" port ], the hostname an IPv4 literal, a bracketed IPv6 literal
// or a DNS name.
func ValidateServerName(name string) error {
	_, _, err := SplitServerName(name)
	return err
}

// SplitServerName returns the host (without brackets) and port (0 when absent)
// of a valid server name.
func SplitServerName(name string) (host string, port int, err error) {
	bad := func(why string) (string, int, error) {
		return "", 0, fmt.Errorf("%w %q: %s", ErrInvalidServerName, name, why)
	}
	if name == "" {
		return bad("empty")
	}
	if len(name) > MaxServerNameLength {
		return bad("too long")
	}
	hostPart, portPart := name, ""
	if strings.HasPrefix(name, "[") {
		end := strings.IndexByte(name, ']')
		if end < 0 {
			return bad("unterminated IPv6 literal")
		}
		hostPart, portPart = name[1:end], name[end+1:]
		if portPart != "" && !strings.HasPrefix(portPart, ":") {
			return bad("unexpected characters after the IPv6 literal")
		}
		portPart = strings.TrimPrefix(portPart, ":")
		if len(hostPart) < 2 || len(hostPart) > 45 || strings.Trim(hostPart, "0123456789abcdefABCDEF:.") != "" {
			return bad("IPv6 literal has invalid characters")
		}
		if ip := net.ParseIP(hostPart); ip == nil || ip.To4() != nil && !strings.Contains(hostPart, ":") {
			return bad("not an IPv6 address")
		}
		if strings.HasPrefix(name, "[") && portPart == "" && strings.HasSuffix(name, ":") {
			return bad("empty port")
		}
	} else {
		if i := strings.LastIndexByte(name, ':'); i >= 0 {
			hostPart, portPart = name[:i], name[i+1:]
			if portPart == "" {
				return bad("empty port")
			}
		}
		if hostPart == "" {
			return bad("empty hostname")
		}
		if len(hostPart) > 255 {
			return bad("hostname longer than 255 characters")
		}
		for i := 0; i < len(hostPart); i++ {
			c := hostPart[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
				return bad(fmt.Sprintf("character %q is not allowed in a hostname", c))
			}
		}
		if looksLikeIPv4(hostPart) && net.ParseIP(hostPart) == nil {
			return bad("IPv4 literal out of range")
		}
	}
	if portPart != "" {
		if len(portPart) > 5 || strings.Trim(portPart, "0123456789") != "" {
			return bad("port is not a number")
		}
		p, _ := strconv.Atoi(portPart)
		if p < 1 || p > 65535 {
			return bad("port out of range")
		}
		port = p
	}
	return hostPart, port, nil
}

func looksLikeIPv4(h string) bool {
	parts := strings.Split(h, ".")
	if len(parts) != 4 {
		return false
	}
	for _, p := range parts {
		if p == "" || len(p) > 3 || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}
