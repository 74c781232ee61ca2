package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/fedpipe/fedpipe/federation/canonicaljson"
	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/schema"
)

// DeviceUpdate is a change of a local user's device: new keys or display
// name, or its deletion. Servers sharing a room with the user are told
// (m.device_list_update), each with a prev_id chain so that a gap is seen.
type DeviceUpdate struct {
	UserID, DeviceID string
	// DisplayName, when set, is sent as device_display_name.
	DisplayName *string
	// Keys is the device's keys (the device_keys object), absent when Deleted.
	Keys    json.RawMessage
	Deleted bool
}

// SigningKeyUpdate is a change of a local user's cross-signing keys
// (m.signing_key_update): at least one of them.
type SigningKeyUpdate struct {
	UserID                    string
	MasterKey, SelfSigningKey json.RawMessage
}

// maxDeviceContent bounds an update's content, leaving room in its EDU for
// the user and device ids, the stream_id and a prev_id.
const maxDeviceContent = schema.MaxEDUBytes - 2048

// maxDisplayName bounds a device display name (UTF-8 bytes).
const maxDisplayName = 255

// UpdateDevices validates updates and stores them in device_lists_stream
// inside tx, returning their stream positions. Users must be of origin (our
// server name, when set). A *ValidationError (field "devices[i]...") means
// nothing was written; a *SizeError names an update too large for an EDU.
func UpdateDevices(ctx context.Context, tx pgx.Tx, origin string, updates []DeviceUpdate) ([]int64, error) {
	contents := make([][]byte, len(updates))
	for i, u := range updates {
		c, err := deviceContent(origin, "devices["+strconv.Itoa(i)+"].", u)
		if err != nil {
			return nil, err
		}
		contents[i] = c
	}
	rows := make([]deviceRow, len(updates))
	for i, u := range updates {
		rows[i] = deviceRow{u.UserID, "device", u.DeviceID, contents[i]}
	}
	return storeDeviceRows(ctx, tx, rows)
}

// UpdateSigningKeys validates update and stores it in device_lists_stream
// inside tx, returning its stream position.
func UpdateSigningKeys(ctx context.Context, tx pgx.Tx, origin string, update SigningKeyUpdate) (int64, error) {
	c, err := signingContent(origin, "", update)
	if err != nil {
		return 0, err
	}
	pos, err := storeDeviceRows(ctx, tx, []deviceRow{{update.UserID, "signing_keys", "", c}})
	if err != nil {
		return 0, err
	}
	return pos[0], nil
}

type deviceRow struct {
	userID, kind, deviceID string
	content                []byte
}

func storeDeviceRows(ctx context.Context, tx pgx.Tx, rows []deviceRow) ([]int64, error) {
	return insertAll(ctx, tx, len(rows), `INSERT INTO device_lists_stream (user_id, kind, device_id, content) VALUES ($1, $2, $3, $4) RETURNING stream_id`,
		func(i int) []any {
			return []any{rows[i].userID, rows[i].kind, rows[i].deviceID, string(rows[i].content)}
		},
		func(i int) string { return "the device-list update of " + rows[i].userID })
}

// checkLocalUser checks a user id of origin.
func checkLocalUser(field, user, origin string) error {
	if err := mxid.CheckUserID(user); err != nil {
		return idError(field, err)
	}
	if origin != "" && mxid.ServerPart(user) != origin {
		return &ValidationError{Field: field, Reason: quote(user) + " is not a user of " + origin}
	}
	return nil
}

// keyObject checks raw is a JSON object with a canonical form and returns it canonical.
func keyObject(field string, raw json.RawMessage) (json.RawMessage, error) {
	c, err := canonicaljson.Canonicalize(raw)
	if err != nil || len(c) == 0 || c[0] != '{' {
		return nil, &ValidationError{Field: field, Reason: "must be a JSON object with a canonical form (integers, no floats)"}
	}
	return c, nil
}

// deviceContent is a device update's stored content, canonical.
func deviceContent(origin, prefix string, u DeviceUpdate) ([]byte, error) {
	bad := func(field, reason string) error { return &ValidationError{Field: prefix + field, Reason: reason} }
	if err := checkLocalUser(prefix+"user_id", u.UserID, origin); err != nil {
		return nil, err
	}
	if u.DeviceID == "" {
		return nil, bad("device_id", "missing")
	}
	if err := schema.CheckIdentifier("device_id", u.DeviceID); err != nil {
		return nil, bad("device_id", err.Error())
	}
	content := map[string]any{}
	if u.DisplayName != nil {
		if err := schema.CheckText("device_display_name", *u.DisplayName, maxDisplayName); err != nil {
			return nil, bad("device_display_name", err.Error())
		}
		content["device_display_name"] = *u.DisplayName
	}
	switch {
	case u.Deleted && len(u.Keys) > 0:
		return nil, bad("keys", "a deleted device has no keys")
	case u.Deleted:
		content["deleted"] = true
	case len(u.Keys) > 0:
		k, err := keyObject(prefix+"keys", u.Keys)
		if err != nil {
			return nil, err
		}
		content["keys"] = k
	}
	return sizedContent(prefix+"keys", content)
}

// signingContent is a signing key update's content (the m.signing_key_update
// content), canonical.
func signingContent(origin, prefix string, u SigningKeyUpdate) ([]byte, error) {
	if err := checkLocalUser(prefix+"user_id", u.UserID, origin); err != nil {
		return nil, err
	}
	if len(u.MasterKey) == 0 && len(u.SelfSigningKey) == 0 {
		return nil, &ValidationError{Field: prefix + "master_key", Reason: "a master or self-signing key is required"}
	}
	content := map[string]any{"user_id": u.UserID}
	for name, raw := range map[string]json.RawMessage{"master_key": u.MasterKey, "self_signing_key": u.SelfSigningKey} {
		if len(raw) == 0 {
			continue
		}
		k, err := keyObject(prefix+name, raw)
		if err != nil {
			return nil, err
		}
		content[name] = k
	}
	return sizedContent(prefix+"master_key", content)
}

func sizedContent(field string, content map[string]any) ([]byte, error) {
	c, err := canonicaljson.Marshal(content)
	if err != nil {
		return nil, err
	}
	if len(c) > maxDeviceContent {
		return nil, &SizeError{&ValidationError{Field: field, Reason: fmt.Sprintf("update of %d bytes, at most %d", len(c), maxDeviceContent)}}
	}
	return c, nil
}
