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

// maxRoomBatch is the most room records a partition routes together: one
// query for the rooms not in memory, one round trip for the membership
// changes and presence look-ups, one write of the outbound records. Routing
// them one at a time made the router wait on PostgreSQL for every membership
// change (two round trips for a join), so a backlog drained at the pace of
// those round trips, not of the CPU (issue 18).
const maxRoomBatch = 500

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
	tick      uint64 // counts batches, for least-recently-used eviction
	batch     runtime.Batch[schema.RoomRecord]
}

func newPartitionHandler(r *Router, topic string, partition int) *partitionHandler {
	p := &partitionHandler{r: r, topic: topic, partition: partition, rooms: map[string]*room{}}
	p.batch = runtime.Batch[schema.RoomRecord]{Max: maxRoomBatch, Flush: p.flush}
	return p
}

// Handle keeps a room record for the batch it is routed in (runtime.Batch:
// the partition's records fetched together, up to maxRoomBatch). A record
// that cannot be decoded is poison; the records kept before it are routed
// first.
func (p *partitionHandler) Handle(ctx context.Context, m kafka.Message, done func()) error {
	rec, err := schema.DecodeRoomRecord(m.Value)
	if err == nil && rec.Kind != schema.KindEvent && rec.Kind != schema.KindStateDelta {
		// DecodeRoomRecord admits only the kinds above; a new kind is for a newer router.
		err = fmt.Errorf("room record of kind %q", rec.Kind)
	}
	if err != nil {
		if ferr := p.batch.FlushKept(ctx); ferr != nil {
			return ferr
		}
		return fmt.Errorf("decoding %s/%d@%d: %w: %w", p.topic, p.partition, m.Offset, runtime.ErrPoison, err)
	}
	return p.batch.Add(ctx, m, rec, done)
}

// routed is what a batch of room records produces: the membership changes to
// store, the presence a join tells (looked up in the same round trip as the
// changes are stored), and the outbound records.
type routed struct {
	changes []change
	joins   []*joinPresence
	msgs    []kafka.Message
	dests   []int // destinations of each local event, for the histogram
}

// flush routes a batch in offset order: memory first (the membership each
// event goes out with), then PostgreSQL in one round trip (the changes, then
// the presence look-ups of the joins), then one write of every outbound
// record; done runs once the broker has them all. On failure the batch's
// rooms are dropped from memory, which then holds nothing the store does not:
// the retry, or runtime.Batch's one-at-a-time retry of a poison batch, loads
// them again and routes the records as a replay (routing.Positions).
func (p *partitionHandler) flush(ctx context.Context, recs []schema.RoomRecord, done func()) error {
	touched, err := p.resident(ctx, recs)
	if err != nil {
		return err
	}
	var out routed
	for _, rec := range recs {
		if err := p.route(ctx, rec, &out); err != nil {
			p.forget(touched)
			return err
		}
	}
	if err := p.r.store.saveAndLookUp(ctx, out.changes, out.joins, p.r.cfg.ServerName); err != nil {
		p.forget(touched)
		return err
	}
	p.r.m.changes.Add(float64(len(out.changes)))
	presence, err := p.presenceRecords(out.joins)
	if err != nil {
		p.forget(touched)
		return err
	}
	msgs := append(out.msgs, presence...)
	if len(msgs) > 0 {
		if err := p.r.out.Write(ctx, msgs, done); err != nil {
			p.forget(touched)
			return fmt.Errorf("writing %d outbound records of %d room records: %w", len(msgs), len(recs), err)
		}
	} else {
		done()
	}
	for _, rec := range recs {
		p.r.m.records.WithLabelValues(rec.Kind).Inc()
	}
	for _, n := range out.dests {
		p.r.m.destinations.Observe(float64(n))
	}
	p.r.m.outbound.Add(float64(len(out.msgs)))
	return nil
}

// needsRoom says whether routing rec reads its room's membership: local
// events (their destinations) and member events and deltas (which change it).
// Remote events go nowhere (routing.PDUDestinations).
func (p *partitionHandler) needsRoom(rec schema.RoomRecord) bool {
	if rec.Type == routing.TypeMember {
		return true
	}
	return rec.Kind == schema.KindEvent && rec.Origin == p.r.cfg.ServerName
}

// route applies one record to memory and adds what it produces to out.
func (p *partitionHandler) route(ctx context.Context, rec schema.RoomRecord, out *routed) error {
	if !p.needsRoom(rec) {
		return nil
	}
	rm := p.rooms[rec.RoomID] // resident made it so
	if rec.Kind == schema.KindEvent {
		return p.event(ctx, rec, rm, out)
	}
	if rec.Type == routing.TypeMember {
		p.delta(rec, rm, out)
	}
	return nil
}

// event adds one outbound record per destination of a local event: the
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
func (p *partitionHandler) event(ctx context.Context, rec schema.RoomRecord, rm *room, out *routed) error {
	if rm.pos.NeedsRewind(rec.Position) {
		// A replay: memory already holds this event's deltas or later ones.
		// The history read must hold the batch's changes before it.
		if err := p.r.store.save(ctx, out.changes...); err != nil {
			return err
		}
		p.r.m.changes.Add(float64(len(out.changes)))
		out.changes = out.changes[:0]
		joined, err := p.r.store.joinedBefore(ctx, rec.RoomID, rec.Position)
		if err != nil {
			return err
		}
		rm.state = routing.NewRoomState(joined...)
		rm.pos.Applied = rec.Position - 1
		p.r.m.rewinds.Inc()
	}
	if rec.Origin != p.r.cfg.ServerName {
		return nil // routing.PDUDestinations: remote events go nowhere
	}
	dests := routing.PDUDestinations(rm.state, p.r.cfg.ServerName, rec.Origin)
	out.dests = append(out.dests, len(dests))
	if len(dests) == 0 {
		return nil
	}
	msgs, err := pduRecords(rec, dests, p.r.partitionOf, p.r.cfg.Instance)
	if err != nil {
		return err
	}
	out.msgs = append(out.msgs, msgs...)
	return nil
}

// delta applies a membership delta in memory and, unless it is a replay of a
// stored one, adds it to the changes to store with the room's position
// (routing.Positions). The batch's records are done only once its changes are
// stored, so no offset is committed past a change the store lacks.
func (p *partitionHandler) delta(rec schema.RoomRecord, rm *room, out *routed) {
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
			out.changes = append(out.changes, change{roomID: rec.RoomID, userID: user, position: rec.Position, joined: joined})
			rm.state.Apply(user, rec.Membership)
			rm.pos.Stored = max(rm.pos.Stored, rec.Position)
		}
	}
	if joins && rm.state.IsJoined(user) {
		if j := p.joinPresence(rec, rm.state, serverWasJoined); j != nil {
			out.joins = append(out.joins, j)
		}
	}
	rm.pos.Applied = max(rm.pos.Applied, rec.Position)
}

// resident makes the rooms a batch reads resident, loading those not in
// memory in one query, and returns them. Rooms the batch reads are not
// evicted to make room for the others.
func (p *partitionHandler) resident(ctx context.Context, recs []schema.RoomRecord) ([]string, error) {
	p.tick++
	var touched, missing []string
	seen := map[string]bool{}
	for _, rec := range recs {
		if !p.needsRoom(rec) || seen[rec.RoomID] {
			continue
		}
		seen[rec.RoomID] = true
		touched = append(touched, rec.RoomID)
		if rm, ok := p.rooms[rec.RoomID]; ok {
			rm.used = p.tick
		} else {
			missing = append(missing, rec.RoomID)
		}
	}
	if len(missing) == 0 {
		return touched, nil
	}
	loaded, err := p.r.store.loadRooms(ctx, missing)
	if err != nil {
		return nil, err
	}
	for len(p.rooms)+len(missing) > p.r.cfg.RoomsPerPartition {
		if p.evict() == 0 {
			break // every room is the batch's or a replay's: over the bound for now
		}
	}
	for _, id := range missing {
		l := loaded[id]
		p.rooms[id] = &room{state: routing.NewRoomState(l.joined...), pos: routing.Positions{Applied: l.last, Stored: l.last}, used: p.tick}
	}
	p.r.m.rooms.Add(float64(len(missing)))
	return touched, nil
}

// forget drops rooms from memory after a failed batch: memory may hold
// changes the store does not, and loading them again is how it agrees again.
func (p *partitionHandler) forget(rooms []string) {
	n := 0
	for _, id := range rooms {
		if _, ok := p.rooms[id]; ok {
			delete(p.rooms, id)
			n++
		}
	}
	p.r.m.rooms.Sub(float64(n))
}

// evict drops the least recently used tenth of the rooms in memory (at least
// one), so that a full partition pays a scan every RoomsPerPartition/10
// loads, not at every one, and returns how many it dropped. A dropped room is
// loaded again from PostgreSQL, which holds every change applied in memory,
// except while memory is behind the store (a replay, Applied < Stored): such
// rooms are kept, since a reload would skip the deltas still to be replayed,
// as are the rooms of the batch being routed.
func (p *partitionHandler) evict() int {
	type entry struct {
		id   string
		used uint64
	}
	var candidates []entry
	for id, rm := range p.rooms {
		if rm.pos.Applied >= rm.pos.Stored && rm.used < p.tick {
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
	return n
}

// Close drops the partition's rooms and abandons the records kept for a
// batch: whoever handles the partition next loads the rooms again from
// PostgreSQL, which holds every change whose record was done, and routes the
// abandoned records.
func (p *partitionHandler) Close(ctx context.Context) error {
	p.batch.Close()
	p.r.m.rooms.Sub(float64(len(p.rooms)))
	p.rooms = map[string]*room{}
	// The generation has ended: records still queued are dropped, and the next
	// owner must not see ours land after its own.
	return p.r.out.Settle(ctx)
}
