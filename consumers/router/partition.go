package router

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/federation/routing"
	"github.com/fedpipe/fedpipe/schema"
)

// room is a room's membership in memory and how far it has got.
type room struct {
	state *routing.RoomState
	pos   routing.Positions
	used  uint64 // the partition's tick when last handled
}

// partitionHandler routes one partition of <prefix>.room. Handle is called in
// offset order, one record at a time, so it needs no lock; only the done
// callbacks it hands to the writer run elsewhere.
type partitionHandler struct {
	r         *Router
	topic     string
	partition int
	rooms     map[string]*room
	tick      uint64 // counts room look-ups, for least-recently-used eviction
}

// Handle routes an event or applies a state delta. A record that cannot be
// decoded is poison; any other error leaves memory as it was before the call,
// so the runtime can hand the same record again.
func (p *partitionHandler) Handle(ctx context.Context, m kafka.Message, done func()) error {
	rec, err := schema.DecodeRoomRecord(m.Value)
	if err != nil {
		return fmt.Errorf("decoding %s/%d@%d: %w: %w", p.topic, p.partition, m.Offset, runtime.ErrPoison, err)
	}
	switch rec.Kind {
	case schema.KindEvent:
		err = p.event(ctx, rec, done)
	case schema.KindStateDelta:
		err = p.delta(ctx, rec, done)
	default:
		// DecodeRoomRecord admits only the kinds above; a new kind is for a newer router.
		return fmt.Errorf("%s/%d@%d: %w: room record of kind %q", p.topic, p.partition, m.Offset, runtime.ErrPoison, rec.Kind)
	}
	if err == nil {
		p.r.m.records.WithLabelValues(rec.Kind).Inc()
	}
	return err
}

// event writes one outbound record per destination of a local event: the
// servers joined in the state before it (routing.PDUDestinations). The
// membership in memory is that state: the deltas of position N follow the event
// of position N on the topic.
//
// A replayed event rewinds the membership in memory to the state before it, so
// that the event goes where it went the first time (a kick or ban of a server's
// last joined user still reaches that server) and the deltas that follow
// are applied again: a replayed join then tells remote servers presence again
// (joinPresence), which the crashed or revoked owner may have stored without
// the broker taking its records. Remote events go nowhere, so only remote
// member events, whose deltas may be joins, load the room.
func (p *partitionHandler) event(ctx context.Context, rec schema.RoomRecord, done func()) error {
	local := rec.Origin == p.r.cfg.ServerName
	if !local && rec.Type != routing.TypeMember {
		done()
		return nil
	}
	rm, err := p.room(ctx, rec.RoomID)
	if err != nil {
		return err
	}
	if rm.pos.NeedsRewind(rec.Position) {
		// A replay: memory already holds this event's deltas or later ones.
		joined, err := p.r.store.joinedBefore(ctx, rec.RoomID, rec.Position)
		if err != nil {
			return err
		}
		rm.state = routing.NewRoomState(joined...)
		rm.pos.Applied = rec.Position - 1
		p.r.m.rewinds.Inc()
	}
	if !local {
		done() // routing.PDUDestinations: remote events go nowhere
		return nil
	}
	dests := routing.PDUDestinations(rm.state, p.r.cfg.ServerName, rec.Origin)
	p.r.m.destinations.Observe(float64(len(dests)))
	if len(dests) == 0 {
		done()
		return nil
	}
	msgs, err := pduRecords(rec, dests, p.r.cfg.Instance)
	if err != nil {
		return err
	}
	if err := p.r.out.Write(ctx, msgs, done); err != nil {
		return fmt.Errorf("writing %d outbound records of %s: %w", len(msgs), rec.EventID, err)
	}
	p.r.m.outbound.Add(float64(len(msgs)))
	return nil
}

// delta applies a membership delta in memory and, unless it is a replay of a
// stored one, stores it first with the room's position (routing.Positions).
func (p *partitionHandler) delta(ctx context.Context, rec schema.RoomRecord, done func()) error {
	if rec.Type != routing.TypeMember {
		done()
		return nil
	}
	rm, err := p.room(ctx, rec.RoomID)
	if err != nil {
		return err
	}
	user := *rec.StateKey
	action := rm.pos.Delta(rec.Position)
	// A join of a user not joined before may tell remote servers presence
	// (joinPresence). A join replayed after its member event rewound memory
	// (DeltaApply) tells them again: at least once, even when the owner before
	// stored the join and stopped before the broker took its presence records.
	joins := action != routing.DeltaSkip && rec.Membership == routing.MembershipJoin && !rm.state.IsJoined(user)
	var serverWasJoined bool
	if joins {
		server, _ := mxid.ServerOf(user)
		serverWasJoined = rm.state.ServerJoined(server)
	}
	switch action {
	case routing.DeltaSkip:
	case routing.DeltaApply:
		rm.state.Apply(user, rec.Membership)
	case routing.DeltaApplyAndStore:
		joined := rec.Membership == routing.MembershipJoin
		if _, ok := mxid.ServerOf(user); ok && rm.state.IsJoined(user) != joined {
			if err := p.r.store.save(ctx, change{roomID: rec.RoomID, userID: user, position: rec.Position, joined: joined}); err != nil {
				return err
			}
			p.r.m.changes.Inc()
			rm.state.Apply(user, rec.Membership)
			rm.pos.Stored = max(rm.pos.Stored, rec.Position)
		}
	}
	if joins && rm.state.IsJoined(user) {
		msgs, err := p.joinPresence(ctx, rec, rm.state, serverWasJoined)
		if err == nil && len(msgs) > 0 {
			if err = p.r.out.Write(ctx, msgs, done); err != nil {
				err = fmt.Errorf("writing presence for the join of %s to %s: %w", user, rec.RoomID, err)
			}
		}
		if err != nil {
			// Memory goes back to before the join; the change is stored, so
			// the retry applies it again (DeltaApply) and tells again.
			rm.state.Apply(user, "leave")
			return err
		}
		rm.pos.Applied = max(rm.pos.Applied, rec.Position)
		if len(msgs) > 0 {
			return nil // done runs when the broker has the records
		}
		done()
		return nil
	}
	rm.pos.Applied = max(rm.pos.Applied, rec.Position)
	done()
	return nil
}

// room returns a room's membership, loading it on first sight.
func (p *partitionHandler) room(ctx context.Context, roomID string) (*room, error) {
	p.tick++
	if rm, ok := p.rooms[roomID]; ok {
		rm.used = p.tick
		return rm, nil
	}
	joined, last, err := p.r.store.load(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if len(p.rooms) >= p.r.cfg.RoomsPerPartition {
		p.evict()
	}
	rm := &room{state: routing.NewRoomState(joined...), pos: routing.Positions{Applied: last, Stored: last}, used: p.tick}
	p.rooms[roomID] = rm
	p.r.m.rooms.Inc()
	return rm, nil
}

// evict drops the least recently used tenth of the rooms in memory (at least
// one), so that a full partition pays a scan every RoomsPerPartition/10
// loads, not at every one. A dropped room is loaded again from PostgreSQL,
// which holds every change applied in memory, except while memory is
// behind the store (a replay, Applied < Stored): such rooms are kept, since a
// reload would skip the deltas still to be replayed.
func (p *partitionHandler) evict() {
	type entry struct {
		id   string
		used uint64
	}
	var candidates []entry
	for id, rm := range p.rooms {
		if rm.pos.Applied >= rm.pos.Stored {
			candidates = append(candidates, entry{id, rm.used})
		}
	}
	n := min(len(candidates), max(1, p.r.cfg.RoomsPerPartition/10))
	slices.SortFunc(candidates, func(a, b entry) int { return cmp.Compare(a.used, b.used) })
	for _, c := range candidates[:n] {
		delete(p.rooms, c.id)
	}
	p.r.m.rooms.Sub(float64(n))
	p.r.m.evicted.Add(float64(n))
}

// Close drops the partition's rooms: whoever handles it next loads them again
// from PostgreSQL, which holds every change whose record was handled.
func (p *partitionHandler) Close(ctx context.Context) error {
	p.r.m.rooms.Sub(float64(len(p.rooms)))
	p.rooms = map[string]*room{}
	// The generation has ended: records still queued are dropped, and the next
	// owner must not see ours land after its own.
	return p.r.out.Settle(ctx)
}
