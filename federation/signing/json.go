package signing

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/fedpipe/fedpipe/federation/canonicaljson"
)

// ErrBadSignature is wrapped by VerifyJSON when a signature is missing or wrong.
var ErrBadSignature = errors.New("bad signature")

// SignJSON returns obj, a JSON object, with serverName's signature under
// signatures.<serverName>.<key id>, canonically encoded. Existing signatures are
// kept; `signatures` and `unsigned` are not covered by the signature.
func SignJSON(serverName string, k *Key, obj []byte) ([]byte, error) {
	m, err := decodeObject(obj)
	if err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}
	sigs := map[string]map[string]string{}
	if raw, ok := m["signatures"]; ok {
		if err := json.Unmarshal(raw, &sigs); err != nil {
			return nil, fmt.Errorf("signing: existing signatures are not an object of objects of strings: %w", err)
		}
		if sigs == nil {
			sigs = map[string]map[string]string{}
		}
	}
	unsigned, hasUnsigned := m["unsigned"]
	delete(m, "signatures")
	delete(m, "unsigned")
	msg, err := canonicaljson.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}
	if sigs[serverName] == nil {
		sigs[serverName] = map[string]string{}
	}
	sigs[serverName][k.ID] = base64.RawStdEncoding.EncodeToString(k.Sign(msg))
	raw, err := json.Marshal(sigs)
	if err != nil {
		return nil, fmt.Errorf("signing: encoding signatures: %w", err)
	}
	m["signatures"] = raw
	if hasUnsigned {
		m["unsigned"] = unsigned
	}
	return canonicaljson.Marshal(m)
}

// decodeObject splits a JSON object into its members. It first checks that obj
// has a canonical form, so duplicate keys (which decoders resolve differently,
// letting signer and verifier see different objects) are refused.
func decodeObject(obj []byte) (map[string]json.RawMessage, error) {
	if _, err := canonicaljson.Canonicalize(obj); err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil || m == nil {
		return nil, errors.New("not a JSON object")
	}
	return m, nil
}

// VerifyJSON checks serverName's signature with keyID over the JSON object obj.
// Every failure wraps ErrBadSignature.
func VerifyJSON(serverName, keyID string, pub ed25519.PublicKey, obj []byte) error {
	m, err := decodeObject(obj)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	raw, ok := m["signatures"]
	if !ok {
		return fmt.Errorf("%w: object has no signatures", ErrBadSignature)
	}
	var sigs map[string]map[string]string
	if err := json.Unmarshal(raw, &sigs); err != nil {
		return fmt.Errorf("%w: signatures are not an object of objects of strings: %w", ErrBadSignature, err)
	}
	sig, ok := sigs[serverName][keyID]
	if !ok {
		return fmt.Errorf("%w: no signature by %s with %s", ErrBadSignature, serverName, keyID)
	}
	delete(m, "signatures")
	delete(m, "unsigned")
	msg, err := canonicaljson.Marshal(m)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	return VerifyBytes(pub, msg, sig)
}

// VerifyBytes checks a base64 ed25519 signature over msg. The spec sends it
// unpadded but asks decoders to accept padding too.
func VerifyBytes(pub ed25519.PublicKey, msg []byte, sig string) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: public key is %d bytes", ErrBadSignature, len(pub))
	}
	raw, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(sig, "="))
	if err != nil {
		return fmt.Errorf("%w: signature is not unpadded base64", ErrBadSignature)
	}
	if !ed25519.Verify(pub, msg, raw) {
		return fmt.Errorf("%w: signature does not match", ErrBadSignature)
	}
	return nil
}
