package router

import (
	"context"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/federation/presence"
	"github.com/fedpipe/fedpipe/schema"
)

// presenceHandler routes one partition of <prefix>.presence: each local
// user's presence goes to every remote server sharing a room with the user.
// The rooms and their members are read from PostgreSQL, which every router
// member writes, so the answer does not depend on who owns the user's rooms.
//
// Records that arrive together are routed together (runtime.Batch, up to
// maxPresenceBatch): each destination gets one record holding the latest state
// of every kept user it shares a room with. A storm of presence changes
// then costs one destination query and one outbound record per destination
// per batch, not per change.
type presenceHandler struct {
	r         *Router
	topic     string
	partition int
	batch     runtime.Batch[*schema.PresenceState] // nil: not ours to route
	pos       int64                                // the highest position kept
}

// maxPresenceBatch bounds the presence records routed together.
const maxPresenceBatch = 1000

// Close abandons kept records: not done, they are routed by the next owner.
func (p *presenceHandler) Close(ctx context.Context) error {
	p.batch.Close()
	return p.r.out.Settle(ctx) // see partitionHandler.Close
}

func (p *presenceHandler) Handle(ctx context.Context, m kafka.Message, done func()) error {
	rec, err := schema.DecodePresenceRecord(m.Value)
	if err != nil {
		if ferr := p.batch.FlushKept(ctx); ferr != nil {
			return ferr
		}
		return fmt.Errorf("decoding %s/%d@%d: %w", p.topic, p.partition, m.Offset, runtime.Poison(err))
	}
	var state *schema.PresenceState
	if server, _ := mxid.ServerOf(rec.UserID); server == p.r.cfg.ServerName {
		state = &rec.PresenceState
	} else {
		// Remote users' presence comes from their own servers.
		p.r.m.presence.WithLabelValues("not_local").Inc()
	}
	p.pos = max(p.pos, rec.Position)
	return p.batch.Add(ctx, m, state, done)
}

// flush routes kept records.
func (p *presenceHandler) flush(ctx context.Context, kept []*schema.PresenceState, allDone func()) error {
	if b := p.r.barrier; b != nil {
		waitStart := time.Now()
		if err := b.wait(ctx); err != nil {
			return fmt.Errorf("waiting for the room records before presence: %w", err)
		}
		p.r.m.presenceOrder.Observe(time.Since(waitStart).Seconds())
	}
	start := time.Now()
	pos := p.pos
	latest := map[string]schema.PresenceState{} // a later state of a user replaces an earlier one
	var users []string
	for _, st := range kept {
		if st == nil {
			continue
		}
		if _, seen := latest[st.UserID]; !seen {
			users = append(users, st.UserID)
		}
		latest[st.UserID] = *st
	}
	var msgs []kafka.Message
	if len(users) > 0 {
		dests, err := p.r.store.presenceDestinations(ctx, users, p.r.cfg.ServerName)
		if err != nil {
			return err
		}
		for _, u := range users {
			p.r.m.presenceDests.Observe(float64(len(dests.byUser[u])))
		}
		for _, d := range dests.servers {
			states := make([]schema.PresenceState, 0, len(dests.byServer[d]))
			for _, u := range dests.byServer[d] {
				states = append(states, latest[u])
			}
			m, err := splitPresenceRecords(d, states, pos, p.r.cfg.Instance)
			if err != nil {
				return err
			}
			msgs = append(msgs, m...)
		}
	}
	p.r.m.presenceRoute.Observe(time.Since(start).Seconds())
	if len(msgs) == 0 {
		allDone()
	} else {
		if err := p.r.out.Write(ctx, msgs, allDone); err != nil {
			return fmt.Errorf("writing presence of %d users to their servers: %w", len(users), err)
		}
		p.r.m.presence.WithLabelValues("change").Add(float64(len(msgs)))
	}
	p.r.m.presenceBatch.Observe(float64(len(kept)))
	return nil
}

// splitPresenceRecords builds the outbound presence records of states for one
// destination, split by presence.Split.
func splitPresenceRecords(dest string, states []schema.PresenceState, position int64, instance string) ([]kafka.Message, error) {
	var msgs []kafka.Message
	for _, run := range presence.Split(states) {
		m, err := presenceRecords([]string{dest}, run, position, instance)
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, m...)
	}
	return msgs, nil
}

// presenceRecords builds one outbound presence record per destination.
func presenceRecords(dests []string, states []schema.PresenceState, position int64, instance string) ([]kafka.Message, error) {
	value := func(d string) ([]byte, error) {
		return schema.OutboundRecord{V: schema.SchemaVersion, Kind: schema.KindPresence, Destination: d, Presence: states}.Marshal()
	}
	headers := schema.NewHeaders(schema.KindPresence).WithPosition(position).WithInstance(instance)
	msgs := make([]kafka.Message, 0, len(dests))
	for _, d := range dests {
		v, err := value(d)
		if err != nil {
			return nil, fmt.Errorf("encoding presence record for %s: %w", d, err)
		}
		msgs = append(msgs, headers.Message([]byte(d), v))
	}
	return msgs, nil
}
