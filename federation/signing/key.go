// Package signing holds fedpipe's ed25519 server signing keys, in Synapse's key
// file format, and signs and verifies JSON objects as the Matrix specification's
// appendix "Signing JSON" defines.
package signing

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"strings"
)

// Key is one ed25519 signing key of this server. Make one with NewKey,
// GenerateKey or LoadKeyFile; the zero Key has no private half.
type Key struct {
	// ID is the key identifier, "ed25519:<version>".
	ID   string
	priv ed25519.PrivateKey
}

// Public returns the key's public half.
func (k *Key) Public() ed25519.PublicKey { return k.priv.Public().(ed25519.PublicKey) }

// Sign signs msg.
func (k *Key) Sign(msg []byte) []byte { return ed25519.Sign(k.priv, msg) }

// Version is the part of ID after "ed25519:".
func (k *Key) Version() string { return strings.TrimPrefix(k.ID, "ed25519:") }

var versionRE = regexp.MustCompile(`^[a-zA-Z0-9_]+$`)

// NewKey makes a key from its version and 32-byte seed.
func NewKey(version string, seed []byte) (*Key, error) {
	if !versionRE.MatchString(version) {
		return nil, fmt.Errorf("key version %q must be letters, digits and underscores", version)
	}
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("ed25519 seed is %d bytes, want %d", len(seed), ed25519.SeedSize)
	}
	return &Key{ID: "ed25519:" + version, priv: ed25519.NewKeyFromSeed(seed)}, nil
}

// GenerateKey makes a new random key with a version like Synapse's ("a_" and four
// random letters).
func GenerateKey() (*Key, error) {
	var seed [ed25519.SeedSize]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return nil, fmt.Errorf("reading randomness: %w", err)
	}
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	v := make([]byte, 0, 4)
	var b [16]byte
	for len(v) < cap(v) {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("reading randomness: %w", err)
		}
		for _, c := range b {
			// Rejecting the top of the byte range keeps every letter equally likely.
			if int(c) < 256/len(alphabet)*len(alphabet) && len(v) < cap(v) {
				v = append(v, alphabet[int(c)%len(alphabet)])
			}
		}
	}
	return NewKey("a_"+string(v), seed[:])
}

// Line is the key in Synapse's key file format: "ed25519 <version> <unpadded base64 seed>".
func (k *Key) Line() string {
	return "ed25519 " + k.Version() + " " + base64.RawStdEncoding.EncodeToString(k.priv.Seed())
}

// WriteNewKeyFile generates a key and writes it to path with mode 0600. It refuses
// to overwrite an existing file, so a server's identity is never lost by accident.
func WriteNewKeyFile(path string) (*Key, error) {
	k, err := GenerateKey()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("signing key file %s already exists; refusing to overwrite it", path)
	}
	if err != nil {
		return nil, fmt.Errorf("creating signing key file %s: %w", path, err)
	}
	_, err = f.WriteString(k.Line() + "\n")
	if err == nil {
		err = f.Sync() // the key must survive a crash right after keygen
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		// A truncated key file would be refused at the next start; leave none.
		os.Remove(path)
		return nil, fmt.Errorf("writing signing key file %s: %w", path, err)
	}
	return k, nil
}

// LoadKeyFile reads the keys of a Synapse-format key file, one a line (blank
// lines and # comments allowed). It refuses a file that group or others can
// access, since the key is the server's identity.
func LoadKeyFile(path string) ([]*Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening signing key file: %w", err)
	}
	defer f.Close()
	// Stat the open file, not the path, so the mode checked is the mode of
	// the bytes read.
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("signing key file %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("signing key file %s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("signing key file %s has mode %#o, so group or others can access the server's private key; run chmod 600 %s", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading signing key file %s: %w", path, err)
	}
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("signing key file %s is larger than %d bytes; it is not a key file", path, maxKeyFileSize)
	}
	keys, err := ParseKeys(data)
	if err != nil {
		return nil, fmt.Errorf("signing key file %s: %w", path, err)
	}
	return keys, nil
}

// maxKeyFileSize bounds what LoadKeyFile reads; a key line is about 60 bytes.
const maxKeyFileSize = 64 << 10

// ParseKeys parses key file contents.
func ParseKeys(data []byte) ([]*Key, error) {
	var keys []*Key
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("line %d: want \"ed25519 <version> <base64 seed>\", got %d fields", n, len(f))
		}
		if f[0] != "ed25519" {
			return nil, fmt.Errorf("line %d: unsupported algorithm %q (only ed25519)", n, f[0])
		}
		seed, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(f[2], "="))
		if err != nil {
			return nil, fmt.Errorf("line %d: seed is not base64: %w", n, err)
		}
		if len(seed) != ed25519.SeedSize {
			return nil, fmt.Errorf("line %d: wrong seed length: %d bytes, an ed25519 seed is %d", n, len(seed), ed25519.SeedSize)
		}
		k, err := NewKey(f[1], seed)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		keys = append(keys, k)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading lines: %w", err)
	}
	if len(keys) == 0 {
		return nil, errors.New("no key in the file (it is empty)")
	}
	return keys, nil
}
