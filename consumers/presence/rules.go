package presence

import (
	"hash/fnv"
	"time"

	"github.com/fedpipe/fedpipe/schema"
)

// Timers are the presence timers, Synapse's by default (DefaultTimers).
type Timers struct {
	// SyncTimeout: a user who stops syncing everywhere goes offline this long
	// after the last sync (Synapse's SYNC_ONLINE_TIMEOUT, 30 s).
	SyncTimeout time.Duration
	// Idle: an online user with no activity for this long is unavailable
	// (IDLE_TIMER, 5 min).
	Idle time.Duration
	// Granularity: currently_active holds this long after activity, and a
	// last_active that moves by less is not worth telling remote servers
	// (LAST_ACTIVE_GRANULARITY, 60 s).
	Granularity time.Duration
	// Ping: a user who is not offline is re-announced to remote servers at
	// least this often, since they time users out after 30 minutes without
	// news (FEDERATION_PING_INTERVAL, 25 min).
	Ping time.Duration
}

// DefaultTimers are Synapse's.
var DefaultTimers = Timers{SyncTimeout: 30 * time.Second, Idle: 5 * time.Minute, Granularity: time.Minute, Ping: 25 * time.Minute}

// State is a local user's presence as the stage keeps it (a presence_state
// row). Times are ms since the epoch.
type State struct {
	UserID                 string
	Presence               string
	StatusMsg              *string
	LastActiveTS           int64
	LastUserSyncTS         int64
	LastFederationUpdateTS int64
	CurrentlyActive        bool
}

// initial is the state of a user never seen: offline, never active.
func initial(userID string) State {
	return State{UserID: userID, Presence: schema.PresenceOffline}
}

// input is what happened to a user.
type input struct {
	kind      string // a schema.Kind* of the usersync topic, or kindCleared
	syncing   bool   // user_sync: started (true) or stopped
	presence  string // set_presence
	statusMsg *string
}

// kindCleared: the user's instance shut down or vanished and no other
// instance syncs them.
const kindCleared = "cleared"

// apply applies in at now (Synapse's user_syncing/update_external_syncs_row,
// bump_presence_active_time and set_state).
func apply(s State, in input, now int64) State {
	switch in.kind {
	case schema.KindUserSync:
		if in.syncing && s.Presence == schema.PresenceOffline {
			s.Presence, s.LastActiveTS = schema.PresenceOnline, now
		}
		s.LastUserSyncTS = now
	case schema.KindUserActive:
		s.LastActiveTS = now
		if s.Presence == schema.PresenceUnavailable {
			s.Presence = schema.PresenceOnline
		}
	case schema.KindSetPresence:
		s.Presence, s.StatusMsg = in.presence, in.statusMsg
		if in.presence == schema.PresenceOnline {
			s.LastActiveTS = now
		}
	case kindCleared:
		s.Presence, s.LastUserSyncTS = schema.PresenceOffline, now
	}
	return s
}

// Reasons a state is written to the presence stream.
const (
	reasonNone   = ""
	reasonChange = "change"
	reasonPing   = "ping"
)

// step applies the timers to s at now, given whether the user syncs anywhere,
// and says whether remote servers should be told (reasonChange or reasonPing)
// given prev, the state before whatever led here. A told state gets
// LastFederationUpdateTS = now.
func (t Timers) step(prev, s State, syncing bool, now int64) (State, string) {
	if s.Presence == schema.PresenceOnline && now-s.LastActiveTS > t.Idle.Milliseconds() {
		s.Presence = schema.PresenceUnavailable
	}
	if s.Presence != schema.PresenceOffline && !syncing && now-s.LastUserSyncTS > t.SyncTimeout.Milliseconds() {
		s.Presence = schema.PresenceOffline
	}
	s.CurrentlyActive = s.Presence == schema.PresenceOnline && now-s.LastActiveTS < t.Granularity.Milliseconds()
	reason := reasonNone
	switch {
	case t.shouldNotify(prev, s):
		reason = reasonChange
	case s.Presence != schema.PresenceOffline && now >= t.nextPing(s.UserID, s.LastFederationUpdateTS):
		reason = reasonPing
	}
	if reason != reasonNone {
		s.LastFederationUpdateTS = now
	}
	return s, reason
}

// shouldNotify is Synapse's should_notify: a change remote servers care about.
func (t Timers) shouldNotify(old, s State) bool {
	if old.Presence != s.Presence || !sameMsg(old.StatusMsg, s.StatusMsg) {
		return true
	}
	moved := s.LastActiveTS-old.LastActiveTS > t.Granularity.Milliseconds()
	if old.Presence == schema.PresenceOnline {
		return s.CurrentlyActive != old.CurrentlyActive || (moved && !s.CurrentlyActive)
	}
	return moved
}

func sameMsg(a, b *string) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// nextPing is when a user last told remote servers at lastFed is re-announced.
// Each user has a slot in the ping interval (a hash of the user id), so pings
// of users who came online together spread evenly over the interval instead of
// recurring as one burst: the next ping is the user's first slot at least one
// granularity after lastFed, so never more than Ping+Granularity after it
// (26 minutes by default, within the remotes' 30).
func (t Timers) nextPing(userID string, lastFed int64) int64 {
	period := t.Ping.Milliseconds()
	h := fnv.New64a()
	h.Write([]byte(userID))
	phase := int64(h.Sum64() % uint64(period))
	base := lastFed + t.Granularity.Milliseconds()
	k := (base - phase + period - 1) / period
	if base-phase < 0 {
		k = 0
	}
	return phase + k*period
}

// nextCheck is when a timer may next change s or ping it; 0 when none will
// (offline users have no timers).
func (t Timers) nextCheck(s State, syncing bool) int64 {
	if s.Presence == schema.PresenceOffline {
		return 0
	}
	next := t.nextPing(s.UserID, s.LastFederationUpdateTS)
	if s.Presence == schema.PresenceOnline {
		if s.CurrentlyActive {
			next = min(next, s.LastActiveTS+t.Granularity.Milliseconds())
		}
		next = min(next, s.LastActiveTS+t.Idle.Milliseconds()+1)
	}
	if !syncing {
		next = min(next, s.LastUserSyncTS+t.SyncTimeout.Milliseconds()+1)
	}
	return next
}
