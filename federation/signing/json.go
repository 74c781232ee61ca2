package signing

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/fedpipe/fedpipe/federation/canonicaljson"
)

// ErrBadSignature is wrapped by VerifyJSON when a signature is missing or wrong.
var ErrBadSignature = errors.New("bad signature")

// SignJSON returns obj, a JSON object, with serverName's signature under
// signatures.<serverName>.<key id>. Existing signatures are kept; `signatures`
// and `unsigned` are not covered by the signature.
func SignJSON(serverName string, k *Key, obj []byte) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil || m == nil {
		return nil, fmt.Errorf("signing: not a JSON object: %v", err)
	}
	sigs := map[string]map[string]string{}
	if raw, ok := m["signatures"]; ok {
		if err := json.Unmarshal(raw, &sigs); err != nil {
			return nil, fmt.Errorf("signing: malformed signatures: %w", err)
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
	raw, _ := json.Marshal(sigs) // maps of strings always encode
	m["signatures"] = raw
	if hasUnsigned {
		m["unsigned"] = unsigned
	}
	return canonicaljson.Marshal(m)
}

// VerifyJSON checks serverName's signature with keyID over the JSON object obj.
func VerifyJSON(serverName, keyID string, pub ed25519.PublicKey, obj []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil || m == nil {
		return fmt.Errorf("verifying: not a JSON object: %v", err)
	}
	var sigs map[string]map[string]string
	if err := json.Unmarshal(m["signatures"], &sigs); err != nil {
		return fmt.Errorf("%w: malformed signatures: %v", ErrBadSignature, err)
	}
	sig, ok := sigs[serverName][keyID]
	if !ok {
		return fmt.Errorf("%w: no signature by %s with %s", ErrBadSignature, serverName, keyID)
	}
	delete(m, "signatures")
	delete(m, "unsigned")
	msg, err := canonicaljson.Marshal(m)
	if err != nil {
		return fmt.Errorf("verifying: %w", err)
	}
	return VerifyBytes(pub, msg, sig)
}

// VerifyBytes checks an unpadded-base64 ed25519 signature over msg.
func VerifyBytes(pub ed25519.PublicKey, msg []byte, sig string) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: public key is %d bytes", ErrBadSignature, len(pub))
	}
	raw, err := base64.RawStdEncoding.DecodeString(sig)
	if err != nil {
		return fmt.Errorf("%w: signature is not unpadded base64", ErrBadSignature)
	}
	if !ed25519.Verify(pub, msg, raw) {
		return fmt.Errorf("%w: signature does not match", ErrBadSignature)
	}
	return nil
}
