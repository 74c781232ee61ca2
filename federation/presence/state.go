// Package presence holds fedpipe's presence rules, free of Kafka and SQL: the
// one presence state type and its validator, Synapse's presence rules and
// timers (Timers), what a join tells remote servers (OnJoin, ForNewServer,
// with the stale-offline rule), and the byte-bounded split of many states
// into records (Split). The presence stage, the router, the sender and the
// destination queues call it; the record format (schema) uses its State.
package presence

import (
	"errors"
	"fmt"
)

// Presence states (the Matrix presence enum).
const (
	Online      = "online"
	Unavailable = "unavailable"
	Offline     = "offline"
)

// Valid reports whether p is a presence state.
func Valid(p string) bool {
	return p == Online || p == Unavailable || p == Offline
}

// State is a local user's presence. Times are absolute (ms since the epoch):
// the destination queue turns LastActiveTS into the specification's
// last_active_ago when it builds a transaction, so a slow destination does not
// get a stale age.
//
// Its JSON form is the presence state of the records (schema/records
// presence.schema.json): the presence stage's timer fields are not encoded.
type State struct {
	UserID   string `json:"user_id"`
	Presence string `json:"presence"` // Online, Unavailable or Offline
	// StatusMsg is nil when the user has none; remote servers are sent only
	// a non-empty one.
	StatusMsg       *string `json:"status_msg,omitempty"`
	LastActiveTS    int64   `json:"last_active_ts"`
	CurrentlyActive bool    `json:"currently_active"`

	// LastUserSyncTS is when the user last synced, or stopped syncing
	// (presence stage only).
	LastUserSyncTS int64 `json:"-"`
	// LastFederationUpdateTS is when remote servers were last told of the
	// user (presence stage only).
	LastFederationUpdateTS int64 `json:"-"`
}

// Initial is the state of a user never seen: offline, never active.
func Initial(userID string) State {
	return State{UserID: userID, Presence: Offline}
}

// Status is the status message, "" when there is none.
func (s State) Status() string {
	if s.StatusMsg == nil {
		return ""
	}
	return *s.StatusMsg
}

// ErrInvalid is wrapped by Check.
var ErrInvalid = errors.New("invalid presence state")

// Check reports a state no record or m.presence EDU may carry: one without a
// user, or with a presence other than Online, Unavailable or Offline. The
// record decoders check the identifier and text fields besides, as they do
// for every record.
func (s State) Check() error {
	if s.UserID == "" {
		return fmt.Errorf("%w: state without user_id", ErrInvalid)
	}
	if !Valid(s.Presence) {
		return fmt.Errorf("%w: %s: presence %q is not online, unavailable or offline", ErrInvalid, s.UserID, s.Presence)
	}
	return nil
}
