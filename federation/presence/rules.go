package presence

import (
	"errors"
	"fmt"
	"hash/fnv"
	"time"
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

// Validate reports timers that are not positive, or that let remote servers
// time a user out between pings.
func (t Timers) Validate() error {
	var errs []error
	if t.SyncTimeout <= 0 || t.Idle <= 0 || t.Granularity <= 0 || t.Ping <= 0 {
		errs = append(errs, errors.New("presence timers must be positive"))
	}
	if t.Ping+t.Granularity >= 30*time.Minute {
		errs = append(errs, fmt.Errorf("ping interval %s plus granularity %s must stay below the 30 minutes after which remote servers time a user out", t.Ping, t.Granularity))
	}
	return errors.Join(errs...)
}

// InputKind is what happened to a user.
type InputKind int

// Input kinds. The zero kind is a timer: nothing happened but time passing.
const (
	InputTimer   InputKind = iota
	InputSync              // the user started or stopped syncing on an instance (Input.Syncing)
	InputActive            // the user did something
	InputSet               // the user set their presence and status message
	InputCleared           // the user's instance shut down or vanished and no other instance syncs them
)

// Input is what happened to a user.
type Input struct {
	Kind      InputKind
	Syncing   bool    // InputSync: started (true) or stopped
	Presence  string  // InputSet
	StatusMsg *string // InputSet; nil clears it
}

// Apply applies in at now (Synapse's user_syncing/update_external_syncs_row,
// bump_presence_active_time and set_state).
func Apply(s State, in Input, now int64) State {
	switch in.Kind {
	case InputSync:
		if in.Syncing && s.Presence == Offline {
			s.Presence, s.LastActiveTS = Online, now
		}
		s.LastUserSyncTS = now
	case InputActive:
		s.LastActiveTS = now
		if s.Presence == Unavailable {
			s.Presence = Online
		}
	case InputSet:
		s.Presence, s.StatusMsg = in.Presence, in.StatusMsg
		if in.Presence == Online {
			s.LastActiveTS = now
		}
	case InputCleared:
		s.Presence, s.LastUserSyncTS = Offline, now
	}
	return s
}

// Reason says why a state is written to the presence stream (the values are
// the reason label of fedpipe_presence_stream_writes_total).
type Reason string

// Reasons.
const (
	ReasonNone   Reason = ""
	ReasonChange Reason = "change"
	ReasonPing   Reason = "ping"
)

// Step applies the timers to s at now, given whether the user syncs anywhere,
// and says whether remote servers should be told (ReasonChange or ReasonPing)
// given prev, the state before whatever led here. A told state gets
// LastFederationUpdateTS = now.
func (t Timers) Step(prev, s State, syncing bool, now int64) (State, Reason) {
	if s.Presence == Online && now-s.LastActiveTS > t.Idle.Milliseconds() {
		s.Presence = Unavailable
	}
	if s.Presence != Offline && !syncing && now-s.LastUserSyncTS > t.SyncTimeout.Milliseconds() {
		s.Presence = Offline
	}
	s.CurrentlyActive = s.Presence == Online && now-s.LastActiveTS < t.Granularity.Milliseconds()
	reason := ReasonNone
	switch {
	case t.shouldNotify(prev, s):
		reason = ReasonChange
	case s.Presence != Offline && now >= t.nextPing(s.UserID, s.LastFederationUpdateTS):
		reason = ReasonPing
	}
	if reason != ReasonNone {
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
	if old.Presence == Online {
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

// NextCheck is when a timer may next change s or ping it; 0 when none will
// (offline users have no timers).
func (t Timers) NextCheck(s State, syncing bool) int64 {
	if s.Presence == Offline {
		return 0
	}
	next := t.nextPing(s.UserID, s.LastFederationUpdateTS)
	if s.Presence == Online {
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
