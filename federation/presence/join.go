package presence

import (
	"slices"
	"time"
)

// StaleOfflineAge: an offline state whose last activity is older than this,
// and which has no status message, is not sent to a server that newly joins
// a room (it tells it nothing it would not assume).
const StaleOfflineAge = 7 * 24 * time.Hour

// IsStaleOffline reports whether s is such a state at now (see
// StaleOfflineAge).
func (s State) IsStaleOffline(now time.Time) bool {
	return s.Presence == Offline && s.Status() == "" && s.LastActiveTS < now.Add(-StaleOfflineAge).UnixMilli()
}

// Announcement is what a join tells remote servers about local users'
// presence.
type Announcement int

// Announcements.
const (
	// AnnounceNothing: servers that were in the room and gained no local
	// user get nothing.
	AnnounceNothing Announcement = iota
	// AnnounceUser: a local user joined, and every remote server in the room
	// (RemoteServers) gets the user's presence.
	AnnounceUser
	// AnnounceRoom: a remote server joined a room it was not in, and gets the
	// current presence of the room's local users (ForNewServer), without the
	// users it already shares another room with (it has their presence).
	AnnounceRoom
)

// OnJoin decides what the join of a user of userServer to a room tells remote
// servers, ours being our server name and serverWasJoined whether
// userServer had a user in the room before.
func OnJoin(userServer, ours string, serverWasJoined bool) Announcement {
	switch {
	case userServer == ours:
		return AnnounceUser
	case !serverWasJoined:
		return AnnounceRoom
	}
	return AnnounceNothing
}

// RemoteServers are the servers of joined but ours, in their order.
func RemoteServers(joined []string, ours string) []string {
	var out []string
	for _, s := range joined {
		if s != ours {
			out = append(out, s)
		}
	}
	return out
}

// ForNewServer leaves out of states, for a server that newly joined a room at
// now, the stale offline states (IsStaleOffline) and the users that are not
// joined to the room (joined says who is). states is changed in place.
func ForNewServer(states []State, joined func(userID string) bool, now time.Time) []State {
	return slices.DeleteFunc(states, func(st State) bool { return st.IsStaleOffline(now) || !joined(st.UserID) })
}
