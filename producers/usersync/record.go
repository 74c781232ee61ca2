package usersync

import (
	"fmt"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/schema"
)

// Message checks rec and turns it into the record of <prefix>.usersync:
// keyed by the instance (so one instance's records stay in order on one
// partition) with the kind, schema and instance headers. It fills in V.
// The error says what is wrong in the words of the record's fields.
func Message(rec schema.UserSyncRecord) (kafka.Message, error) {
	rec.V = schema.SchemaVersion
	value, err := rec.Marshal()
	if err != nil {
		return kafka.Message{}, fmt.Errorf("encoding %s record of %s: %w", rec.Kind, rec.Instance, err)
	}
	if _, err := schema.DecodeUserSyncRecord(value); err != nil {
		return kafka.Message{}, err
	}
	return schema.NewHeaders(rec.Kind).WithInstance(rec.Instance).Message([]byte(rec.Instance), value), nil
}

// CheckUserID reports whether userID can be the subject of presence input:
// shaped @localpart:server, at most schema.MaxIdentifierBytes without NUL or
// control characters, and, when serverName is set, a user of that server
// (the presence stage dead-letters records about other servers' users).
func CheckUserID(userID, serverName string) error {
	if !mxid.LooksLikeUserID(userID) {
		return fmt.Errorf("user id %q is not like @user:server", userID)
	}
	if err := schema.CheckIdentifier("user id", userID); err != nil {
		return err
	}
	if serverName != "" {
		if mxid.ServerPart(userID) != serverName {
			return fmt.Errorf("user id %q is not a user of %s", userID, serverName)
		}
	}
	return nil
}
