package schema

import (
	"fmt"

	"github.com/segmentio/encoding/json"
)

// KindDeviceList is the kind of <prefix>.devicelists records and of the
// outbound records the router makes of them: an update of a local user's
// device (edu_type m.device_list_update) or cross-signing keys
// (m.signing_key_update).
const KindDeviceList = "device_list"

// The EDU types of device-list records.
const (
	EDUDeviceListUpdate = "m.device_list_update"
	EDUSigningKeyUpdate = "m.signing_key_update"
)

// DeviceListRecord is a record of <prefix>.devicelists, keyed by user_id.
// For a device update, content holds device_display_name, keys and deleted
// (the sender adds user_id, device_id, stream_id and prev_id per
// destination); for signing keys it is the m.signing_key_update content.
type DeviceListRecord struct {
	V        int             `json:"v"`
	Kind     string          `json:"kind"`
	Position int64           `json:"position"`
	UserID   string          `json:"user_id"`
	DeviceID string          `json:"device_id,omitempty"`
	EDUType  string          `json:"edu_type"`
	Content  json.RawMessage `json:"content"`
}

// Marshal encodes r, its content byte for byte.
func (r DeviceListRecord) Marshal() ([]byte, error) {
	raw := r.Content
	r.Content = nil
	return spliceRaw(r, "content", raw)
}

// DecodeDeviceListRecord decodes and checks a device-list record.
func DecodeDeviceListRecord(value []byte) (DeviceListRecord, error) {
	var r DeviceListRecord
	if err := json.Unmarshal(value, &r); err != nil {
		return r, fmt.Errorf("%w: %v", ErrInvalidRecord, err)
	}
	if r.V != SchemaVersion || r.Kind != KindDeviceList {
		return r, fmt.Errorf("%w: version %d kind %q on the device-list topic", ErrInvalidRecord, r.V, r.Kind)
	}
	return r, checkDeviceList(r.Position, r.UserID, r.DeviceID, r.EDUType, r.Content)
}

// checkDeviceList checks the fields device-list records share.
func checkDeviceList(position int64, userID, deviceID, eduType string, content json.RawMessage) error {
	switch {
	case position <= 0:
		return fmt.Errorf("%w: device_list record without position", ErrInvalidRecord)
	case userID == "" || userID[0] != '@':
		return fmt.Errorf("%w: device_list record's user_id %q", ErrInvalidRecord, userID)
	case eduType == EDUDeviceListUpdate && deviceID == "":
		return fmt.Errorf("%w: device update without device_id", ErrInvalidRecord)
	case eduType == EDUSigningKeyUpdate && deviceID != "":
		return fmt.Errorf("%w: signing key update with a device_id", ErrInvalidRecord)
	case eduType != EDUDeviceListUpdate && eduType != EDUSigningKeyUpdate:
		return fmt.Errorf("%w: device_list record's edu_type %q", ErrInvalidRecord, eduType)
	case len(content) == 0 || content[0] != '{':
		return fmt.Errorf("%w: device_list record's content is not an object", ErrInvalidRecord)
	case len(content) > MaxEDUBytes:
		return fmt.Errorf("%w: device_list content of %d bytes, at most %d", ErrInvalidRecord, len(content), MaxEDUBytes)
	}
	for _, f := range []struct{ name, value string }{{"user_id", userID}, {"device_id", deviceID}} {
		if err := CheckIdentifier(f.name, f.value); err != nil {
			return invalid(err)
		}
	}
	return nil
}
