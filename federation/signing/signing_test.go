package signing

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The specification's cryptographic test vectors (appendix "Signing JSON").
const specSeed = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"

func specKey(t *testing.T) *Key {
	t.Helper()
	seed, err := base64.RawStdEncoding.DecodeString(specSeed)
	if err != nil {
		t.Fatal(err)
	}
	k, err := NewKey("1", seed)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSignJSONSpecVectors(t *testing.T) {
	k := specKey(t)
	for _, tc := range []struct{ in, want string }{
		{`{}`, `{"signatures":{"domain":{"ed25519:1":"K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"}}}`},
		{`{"one": 1, "two": "Two"}`, `{"one":1,"signatures":{"domain":{"ed25519:1":"KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"}},"two":"Two"}`},
	} {
		got, err := SignJSON("domain", k, []byte(tc.in))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tc.want {
			t.Fatalf("SignJSON(%s) =\n%s\nwant\n%s", tc.in, got, tc.want)
		}
		if err := VerifyJSON("domain", "ed25519:1", k.Public(), got); err != nil {
			t.Fatalf("VerifyJSON of the vector: %v", err)
		}
	}
}

func TestSignatureIgnoresUnsignedAndKeepsOthers(t *testing.T) {
	k := specKey(t)
	signed, err := SignJSON("domain", k, []byte(`{"a":1,"unsigned":{"age":5},"signatures":{"other":{"ed25519:x":"abc"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(signed), `"other":{"ed25519:x":"abc"}`) || !strings.Contains(string(signed), `"unsigned":{"age":5}`) {
		t.Fatalf("lost data: %s", signed)
	}
	changedUnsigned := strings.Replace(string(signed), `"age":5`, `"age":6`, 1)
	if err := VerifyJSON("domain", "ed25519:1", k.Public(), []byte(changedUnsigned)); err != nil {
		t.Fatalf("unsigned must not be covered: %v", err)
	}
	tampered := strings.Replace(string(signed), `"a":1`, `"a":2`, 1)
	if err := VerifyJSON("domain", "ed25519:1", k.Public(), []byte(tampered)); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("tampered object verified: %v", err)
	}
	if err := VerifyJSON("nobody", "ed25519:1", k.Public(), signed); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("missing signer verified: %v", err)
	}
}

func TestKeyFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signing.key")
	k, err := WriteNewKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", st.Mode().Perm())
	}
	keys, err := LoadKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0].ID != k.ID || !keys[0].Public().Equal(k.Public()) {
		t.Fatalf("loaded %+v, wrote %+v", keys, k)
	}
	if !regexp.MustCompile(`^ed25519:a_[a-zA-Z]{4}$`).MatchString(k.ID) {
		t.Fatalf("key id %s not in Synapse's style", k.ID)
	}
	if _, err := WriteNewKeyFile(path); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("overwrote an existing key file: %v", err)
	}
}

func TestLoadKeyFileErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct{ name, path, want string }{
		{"missing", filepath.Join(dir, "nope"), "no such file"},
		{"empty", write("empty", "", 0o600), "empty"},
		{"world readable", write("world", "ed25519 a "+specSeed+"\n", 0o644), "chmod 600"},
		{"wrong algorithm", write("alg", "rsa a "+specSeed+"\n", 0o600), "line 1: unsupported algorithm"},
		{"bad base64", write("b64", "ed25519 a !!!!\n", 0o600), "not base64"},
		{"short seed", write("short", "ed25519 a AAAA\n", 0o600), "line 1: wrong seed length: 3 bytes"},
		{"group readable", write("group", "ed25519 a "+specSeed+"\n", 0o640), "chmod 600"},
		{"too large", write("large", strings.Repeat("#\n", 40<<10), 0o600), "larger than"},
		{"only comments", write("comments", "# nothing\n\n", 0o600), "empty"},
		{"second line bad", write("second", "ed25519 a "+specSeed+"\ned25519 b "+specSeed[:20]+"\n", 0o600), "line 2: wrong seed length"},
		{"bad version", write("ver", "ed25519 a-b "+specSeed+"\n", 0o600), "version"},
		{"fields", write("fields", "# comment\ned25519 "+specSeed+"\n", 0o600), "line 2"},
		{"directory", dir, "not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadKeyFile(tc.path)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
				t.Fatalf("error %v, want it to name %s and say %q", err, tc.path, tc.want)
			}
		})
	}
}

func TestSynapseSeedWithPadding(t *testing.T) {
	keys, err := ParseKeys([]byte("ed25519 1 " + specSeed + "=\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !keys[0].Public().Equal(specKey(t).Public()) {
		t.Fatalf("padded seed parsed to another key")
	}
}

func TestWriteNewKeyFileErrorNamesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no-such-dir", "signing.key")
	if _, err := WriteNewKeyFile(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("error %v does not name %s", err, path)
	}
}

func TestSignAndVerifyRejectBadObjects(t *testing.T) {
	k := specKey(t)
	for _, tc := range []struct{ name, in, want string }{
		{"array", `[1]`, "not a JSON object"},
		{"null", `null`, "not a JSON object"},
		{"invalid", `{"a":`, "end of input"},
		{"duplicate key", `{"a":1,"a":2}`, "duplicate"},
		{"float", `{"a":0.5}`, "floats"},
		{"signatures not an object", `{"signatures":[1]}`, "signatures"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := SignJSON("domain", k, []byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("SignJSON error %v, want %q", err, tc.want)
			}
			if err := VerifyJSON("domain", "ed25519:1", k.Public(), []byte(tc.in)); !errors.Is(err, ErrBadSignature) {
				t.Errorf("VerifyJSON error %v, want ErrBadSignature", err)
			}
		})
	}
	if err := VerifyJSON("domain", "ed25519:1", k.Public(), []byte(`{"a":1}`)); err == nil || !strings.Contains(err.Error(), "no signatures") {
		t.Errorf("unsigned object: %v", err)
	}
}

func TestVerifyAcceptsPaddedSignature(t *testing.T) {
	k := specKey(t)
	padded := `{"signatures":{"domain":{"ed25519:1":"K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ=="}}}`
	if err := VerifyJSON("domain", "ed25519:1", k.Public(), []byte(padded)); err != nil {
		t.Fatal(err)
	}
	if err := VerifyJSON("domain", "ed25519:1", k.Public()[:5], []byte(padded)); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("short public key: %v", err)
	}
}
