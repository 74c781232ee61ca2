// Package routing holds the router's rules: which servers are joined to a room,
// where a PDU goes, and how the router's stored membership stays correct when
// room records are replayed. It imports no Kafka and no SQL: the router stage
// (consumers/router) feeds it decoded records and persists what it decides.
package routing

import (
	"slices"

	"github.com/fedpipe/fedpipe/federation/mxid"
)

// MembershipJoin is the only membership that makes a server a destination of a
// room's events. Other memberships (invite, leave, ban, knock) make no server a
// destination, not even of their own m.room.member event (PDUDestinations).
const MembershipJoin = "join"

// TypeMember is the event type whose state key is a user and whose state
// decides the room's joined servers.
const TypeMember = "m.room.member"

// RoomState is the membership of one room as far as routing cares: the joined
// users, and for each server how many of its users are joined. A server is
// joined while at least one of its users is.
type RoomState struct {
	joined  map[string]string // user ID → its server
	servers map[string]int    // server → joined users
	sorted  []string          // JoinedServers, cached until the next change
}

// NewRoomState returns the state with the given users joined.
func NewRoomState(joinedUsers ...string) *RoomState {
	s := &RoomState{joined: map[string]string{}, servers: map[string]int{}}
	for _, u := range joinedUsers {
		s.Apply(u, MembershipJoin)
	}
	return s
}

// Apply records userID's new membership ("" when the state entry was removed)
// and reports whether the set of joined users changed: a displayname change
// (join → join) or invite → leave changes nothing routing needs to store.
// A state key that is not a user ID is ignored.
func (s *RoomState) Apply(userID, membership string) bool {
	server, ok := mxid.ServerOf(userID)
	if !ok {
		return false
	}
	_, was := s.joined[userID]
	is := membership == MembershipJoin
	switch {
	case is && !was:
		s.joined[userID] = server
		s.servers[server]++
		if s.servers[server] == 1 {
			s.sorted = nil
		}
	case was && !is:
		delete(s.joined, userID)
		s.servers[server]--
		if s.servers[server] == 0 {
			delete(s.servers, server)
			s.sorted = nil
		}
	default:
		return false
	}
	return true
}

// IsJoined reports whether userID is joined.
func (s *RoomState) IsJoined(userID string) bool {
	_, ok := s.joined[userID]
	return ok
}

// ServerJoined reports whether at least one user of server is joined.
func (s *RoomState) ServerJoined(server string) bool { return s.servers[server] > 0 }

// JoinedServers returns the joined servers, sorted. The slice is shared until
// the next change of the joined servers: callers must not modify it.
func (s *RoomState) JoinedServers() []string {
	if s.sorted == nil {
		s.sorted = make([]string, 0, len(s.servers))
		for server := range s.servers {
			s.sorted = append(s.sorted, server)
		}
		slices.Sort(s.sorted)
	}
	return s.sorted
}

// JoinedUsers returns the joined users, sorted.
func (s *RoomState) JoinedUsers() []string {
	users := make([]string, 0, len(s.joined))
	for u := range s.joined {
		users = append(users, u)
	}
	slices.Sort(users)
	return users
}

// Len is the number of joined users.
func (s *RoomState) Len() int { return len(s.joined) }
