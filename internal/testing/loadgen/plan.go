// Package loadgen generates a federation workload for demos, end-to-end tests and
// benchmarks: rooms with members on several remote servers that join, leave, get
// invited, kicked and banned and talk, as a homeserver would persist them, together with the deliveries
// a correct federation sender must make. The expectations come from a membership
// model written here, independently of the router, so a routing bug shows up as a
// missing or unexpected delivery.
package loadgen

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"

	"github.com/fedpipe/fedpipe/federation/mxid"
)

// Config shapes a workload.
type Config struct {
	// LocalServer is our server name: the origin of local events.
	LocalServer string
	// RemoteServers names the remote homeservers; each gets users in some rooms.
	RemoteServers []string
	// Rooms is the number of rooms.
	Rooms int
	// Events is the number of events after the initial joins (messages, joins, leaves, invites, kicks, bans).
	Events int
	// ServersPerRoom is how many remote servers start joined to each room.
	ServersPerRoom int
	// Seed makes a workload reproducible.
	Seed uint64
	// PDUPadding adds this many bytes of message body, to size PDUs realistically.
	PDUPadding int
	// RunID, when set, is part of every room id and local user id, so two runs
	// against one database (the demo run twice in one directory) have rooms,
	// users and event ids of their own. Empty keeps workloads reproducible.
	RunID string
}

// Delta is a state change caused by an event.
type Delta struct {
	Type, StateKey, EventID, PrevEventID, Membership, PrevMembership string
}

// Event is one persisted event of the workload.
type Event struct {
	Seq         int // order in the workload, 0-based
	EventID     string
	RoomID      string
	RoomVersion string
	Sender      string
	Origin      string
	Type        string
	StateKey    *string
	PDU         json.RawMessage
	Deltas      []Delta
	// Destinations are the servers this event must reach (sorted); empty for remote-origin events.
	Destinations []string
}

// Plan is a generated workload.
type Plan struct {
	Config Config
	Events []Event
	// Expected counts the (event, destination) deliveries the plan requires.
	Expected int
	byPDU    map[string]int // PDU bytes → Seq
	rooms    []*room        // as they stand after the last event
}

type room struct {
	id      string
	members map[string]string // user id → membership
	state   map[string]string // type + "\x00" + state key → event id
	lastID  string
	depth   int
}

// Generate builds a workload deterministically from cfg.
func Generate(cfg Config) (*Plan, error) {
	if cfg.LocalServer == "" || len(cfg.RemoteServers) == 0 || cfg.Rooms <= 0 || cfg.Events < 0 {
		return nil, fmt.Errorf("loadgen: need a local server, remote servers, rooms > 0 and events >= 0")
	}
	if cfg.ServersPerRoom <= 0 || cfg.ServersPerRoom > len(cfg.RemoteServers) {
		cfg.ServersPerRoom = min(3, len(cfg.RemoteServers))
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x5eed))
	p := &Plan{Config: cfg, byPDU: map[string]int{}}
	rooms := make([]*room, cfg.Rooms)
	local := func(i int) string { return fmt.Sprintf("@local%d:%s", i, cfg.LocalServer) }
	if cfg.RunID != "" {
		local = func(i int) string { return fmt.Sprintf("@local%d-%s:%s", i, cfg.RunID, cfg.LocalServer) }
	}
	remote := func(server string, i int) string { return fmt.Sprintf("@user%d:%s", i, server) }

	for i := range rooms {
		id := fmt.Sprintf("!room%d:%s", i, cfg.LocalServer)
		if cfg.RunID != "" {
			id = fmt.Sprintf("!room%d-%s:%s", i, cfg.RunID, cfg.LocalServer)
		}
		r := &room{id: id, members: map[string]string{}, state: map[string]string{}}
		rooms[i] = r
		p.add(r, local(i%7), "m.room.create", ptr(""), map[string]any{"creator": local(i % 7), "room_version": "10"}, "")
		p.add(r, local(i%7), "m.room.member", ptr(local(i%7)), map[string]any{"membership": "join"}, "join")
		for _, s := range pick(rng, cfg.RemoteServers, cfg.ServersPerRoom) {
			u := remote(s, rng.IntN(3))
			p.add(r, u, "m.room.member", ptr(u), map[string]any{"membership": "join"}, "join")
		}
	}
	for n := 0; n < cfg.Events; n++ {
		r := rooms[rng.IntN(len(rooms))]
		switch x := rng.IntN(100); {
		case x < 6: // a remote user joins (arrives over federation: remote origin)
			s := cfg.RemoteServers[rng.IntN(len(cfg.RemoteServers))]
			u := remote(s, rng.IntN(3))
			if r.members[u] == "join" || r.members[u] == "ban" {
				p.message(r, rng, cfg)
				continue
			}
			p.add(r, u, "m.room.member", ptr(u), map[string]any{"membership": "join"}, "join")
		case x < 9: // a remote user leaves by itself (remote origin)
			if u := anyJoined(rng, r, cfg.LocalServer, false); u != "" {
				p.add(r, u, "m.room.member", ptr(u), map[string]any{"membership": "leave"}, "leave")
				continue
			}
			p.message(r, rng, cfg)
		case x < 11: // a local user kicks a remote user: the kicked server gets its leave
			if u := anyJoined(rng, r, cfg.LocalServer, false); u != "" {
				p.add(r, local(0), "m.room.member", ptr(u), map[string]any{"membership": "leave", "reason": "kick"}, "leave")
				continue
			}
			p.message(r, rng, cfg)
		case x < 13: // a local user invites a remote user, whose server may have no one in the room
			u := remote(cfg.RemoteServers[rng.IntN(len(cfg.RemoteServers))], rng.IntN(3))
			if m := r.members[u]; m == "join" || m == "ban" {
				p.message(r, rng, cfg)
				continue
			}
			p.add(r, local(0), "m.room.member", ptr(u), map[string]any{"membership": "invite"}, "invite")
		case x < 14: // a local user bans a remote user: joined (its server gets the ban) or not (pre-emptive)
			u := remote(cfg.RemoteServers[rng.IntN(len(cfg.RemoteServers))], rng.IntN(3))
			if r.members[u] == "ban" {
				p.message(r, rng, cfg)
				continue
			}
			p.add(r, local(0), "m.room.member", ptr(u), map[string]any{"membership": "ban"}, "ban")
		case x < 17: // a remote server talks (not ours to send)
			if u := anyJoined(rng, r, cfg.LocalServer, false); u != "" {
				p.add(r, u, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "hi from afar"}, "")
				continue
			}
			p.message(r, rng, cfg)
		default:
			p.message(r, rng, cfg)
		}
	}
	p.rooms = rooms
	return p, nil
}

// LocalUsers are the workload's local users that end joined to some room.
func (p *Plan) LocalUsers() []string {
	seen := map[string]bool{}
	var out []string
	for _, r := range p.rooms {
		for u, m := range r.members {
			if m == "join" && mxid.ServerPart(u) == p.Config.LocalServer && !seen[u] {
				seen[u] = true
				out = append(out, u)
			}
		}
	}
	sort.Strings(out)
	return out
}

// SharingServers are the remote servers sharing a room with user after the
// last event: where the user's presence goes.
func (p *Plan) SharingServers(user string) []string {
	servers := map[string]bool{}
	for _, r := range p.rooms {
		if r.members[user] != "join" {
			continue
		}
		for u, m := range r.members {
			if s := mxid.ServerPart(u); m == "join" && s != p.Config.LocalServer {
				servers[s] = true
			}
		}
	}
	out := make([]string, 0, len(servers))
	for s := range servers {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

func (p *Plan) message(r *room, rng *rand.Rand, cfg Config) {
	body := fmt.Sprintf("message %d", len(p.Events)) + strings.Repeat(".", cfg.PDUPadding)
	p.add(r, fmt.Sprintf("@local%d:%s", rng.IntN(5), cfg.LocalServer), "m.room.message", nil,
		map[string]any{"msgtype": "m.text", "body": body}, "")
}

// add appends an event, computes its destinations from the membership before it
// (the servers joined then, whatever the event: a banned server's last user
// gets its ban, an invited or pre-emptively banned user's server with no one
// joined gets nothing), then applies its state change.
func (p *Plan) add(r *room, sender, typ string, stateKey *string, content map[string]any, membership string) {
	origin := mxid.ServerPart(sender)
	r.depth++
	pdu := map[string]any{
		"room_id": r.id, "sender": sender, "type": typ, "content": content,
		"depth": r.depth, "origin_server_ts": 1700000000000 + int64(len(p.Events)),
		"prev_events": []string{}, "auth_events": []string{},
		"hashes": map[string]string{"sha256": "placeholder"},
	}
	if r.lastID != "" {
		pdu["prev_events"] = []string{r.lastID}
	}
	if stateKey != nil {
		pdu["state_key"] = *stateKey
	}
	raw, _ := json.Marshal(pdu) // maps of strings and numbers always marshal
	sum := sha256.Sum256(raw)
	ev := Event{
		Seq: len(p.Events), EventID: "$" + base64.RawURLEncoding.EncodeToString(sum[:]),
		RoomID: r.id, RoomVersion: "10", Sender: sender, Origin: origin, Type: typ, StateKey: stateKey, PDU: raw,
	}
	if origin == p.Config.LocalServer {
		dests := map[string]bool{}
		for u, m := range r.members {
			if m == "join" {
				dests[mxid.ServerPart(u)] = true
			}
		}
		delete(dests, p.Config.LocalServer)
		for d := range dests {
			ev.Destinations = append(ev.Destinations, d)
		}
		sort.Strings(ev.Destinations)
		p.Expected += len(ev.Destinations)
	}
	if stateKey != nil {
		sk := typ + "\x00" + *stateKey
		prevID := r.state[sk]
		r.state[sk] = ev.EventID
		d := Delta{Type: typ, StateKey: *stateKey, EventID: ev.EventID}
		if typ == "m.room.member" {
			d.Membership = membership
			d.PrevMembership = r.members[*stateKey]
			r.members[*stateKey] = membership
		}
		d.PrevEventID = prevID
		ev.Deltas = []Delta{d}
	}
	r.lastID = ev.EventID
	p.byPDU[string(raw)] = ev.Seq
	p.Events = append(p.Events, ev)
}

// SeqOf finds the event a delivered PDU is, by its exact bytes (which also checks
// that nothing on the way re-encoded it).
func (p *Plan) SeqOf(pdu json.RawMessage) (int, bool) {
	s, ok := p.byPDU[string(pdu)]
	return s, ok
}

func anyJoined(rng *rand.Rand, r *room, localServer string, local bool) string {
	var us []string
	for u, m := range r.members {
		if m == "join" && (mxid.ServerPart(u) == localServer) == local {
			us = append(us, u)
		}
	}
	if len(us) == 0 {
		return ""
	}
	sort.Strings(us)
	return us[rng.IntN(len(us))]
}

func pick(rng *rand.Rand, from []string, n int) []string {
	idx := rng.Perm(len(from))[:n]
	out := make([]string, n)
	for i, j := range idx {
		out[i] = from[j]
	}
	return out
}

func ptr(s string) *string { return &s }

// ExpectedPDUs is what dest must receive, in order: the PDUs of the events
// destined to it (a stand-in for a server a check does not wait for).
func (p *Plan) ExpectedPDUs(dest string) []json.RawMessage {
	var out []json.RawMessage
	for _, ev := range p.Events {
		if slices.Contains(ev.Destinations, dest) {
			out = append(out, ev.PDU)
		}
	}
	return out
}
