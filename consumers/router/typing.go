package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/federation/routing"
	"github.com/fedpipe/fedpipe/schema"
)

// Typing timing, Synapse's (synapse/handlers/typing.py), the defaults of
// Config.TypingPing and TypingTick: a user still typing is announced to the
// room's servers again every TypingPing (remote servers time a typing user
// out after 60 s), and timeouts are checked every TypingTick.
const (
	TypingPing = 40 * time.Second
	TypingTick = time.Second
)

// typingHandler routes one partition of <prefix>.typing. It keeps who is
// typing in its rooms and until when, and its own timer: a user still typing
// is announced again every TypingPing, and one whose timeout passed gets
// typing: false, so that nobody stays typing on a remote server. Each
// notification goes, as an m.typing EDU keyed by room and user (only the
// latest is sent), to the servers joined to the room as the router has
// stored it when the notification is handled. Records are committed once
// their EDUs are written: typing is ephemeral, and a member that dies while a
// user types leaves remote servers to time the user out (Synapse: 60 s).
type typingHandler struct {
	r   *Router
	now func() time.Time

	// announcing serializes a change of who is typing with the writing of
	// it, between Handle and the timers: a ping computed just before a user
	// stops must not be written after the stop.
	announcing sync.Mutex
	mu         sync.Mutex
	typing     map[typingKey]*typist

	// ctx is what the timers' records are written in: it ends at Close,
	// once they were acknowledged (the writer drops records whose context
	// ended before they were written).
	ctx    context.Context
	cancel context.CancelFunc
	stop   chan struct{}
	// timers is the timers' supervisor: Close waits for it and returns its error.
	timers errgroup.Group
}

type typingKey struct{ room, user string }

type typist struct {
	until, announced time.Time
}

func newTypingHandler(r *Router) *typingHandler {
	h := &typingHandler{r: r, now: time.Now, typing: map[typingKey]*typist{}, stop: make(chan struct{})}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	h.timers.Go(h.tick)
	return h
}

func (h *typingHandler) Handle(ctx context.Context, m kafka.Message, done func()) error {
	rec, err := schema.DecodeTypingRecord(m.Value)
	if err != nil {
		return runtime.Poison(err)
	}
	if server, _ := mxid.ServerOf(rec.UserID); server != h.r.cfg.ServerName {
		return runtime.Poison(fmt.Errorf("%w: typing of %s, who is not a user of %s", schema.ErrInvalidRecord, rec.UserID, h.r.cfg.ServerName))
	}
	k := typingKey{rec.RoomID, rec.UserID}
	now := h.now()
	until := time.UnixMilli(rec.TS + rec.TimeoutMS)
	typing := rec.Typing && until.After(now) // a replayed notification may have timed out
	h.announcing.Lock()
	defer h.announcing.Unlock()
	h.mu.Lock()
	if typing {
		h.typing[k] = &typist{until: until, announced: now}
	} else {
		delete(h.typing, k)
	}
	h.mu.Unlock()
	return h.announce(ctx, k, typing, done)
}

// announce writes k's typing state to the room's servers.
func (h *typingHandler) announce(ctx context.Context, k typingKey, typing bool, done func()) error {
	joined, _, err := h.r.store.load(ctx, k.room)
	if err != nil {
		return err
	}
	msgs, err := typingRecords(routing.NewRoomState(joined...).JoinedServers(), h.r.cfg.ServerName, k, typing, h.r.cfg.Instance)
	if err != nil {
		return runtime.Poison(err)
	}
	if len(msgs) == 0 {
		done()
		return nil
	}
	if err := h.r.out.Write(ctx, msgs, done); err != nil {
		return fmt.Errorf("writing typing of %s in %s: %w", k.user, k.room, err)
	}
	h.r.m.typing.WithLabelValues(fmt.Sprint(typing)).Add(float64(len(msgs)))
	return nil
}

// typingRecords is one outbound m.typing EDU record per server but ours.
func typingRecords(servers []string, ours string, k typingKey, typing bool, instance string) ([]kafka.Message, error) {
	content, err := json.Marshal(edu.Typing{RoomID: k.room, UserID: k.user, Typing: typing})
	if err != nil {
		return nil, err
	}
	headers := schema.NewHeaders(schema.KindEDU).WithInstance(instance)
	var msgs []kafka.Message
	for _, d := range servers {
		if d == ours {
			continue
		}
		v, err := schema.OutboundRecord{V: schema.SchemaVersion, Kind: schema.KindEDU, Destination: d, EDUType: edu.TypeTyping,
			Content: content, EDUKey: k.room + " " + k.user}.Marshal()
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, headers.Message([]byte(d), v))
	}
	return msgs, nil
}

// tick announces, every TypingTick, typing: false for users whose timeout
// passed and typing: true again for those typing for TypingPing since the
// last announcement, until Close. A failed announcement is logged and
// counted, not returned: remote servers time typing users out themselves.
func (h *typingHandler) tick() error {
	t := time.NewTicker(h.r.cfg.TypingTick)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return nil
		case <-t.C:
		}
		h.expire()
	}
}

func (h *typingHandler) expire() {
	h.announcing.Lock()
	defer h.announcing.Unlock()
	now := h.now()
	type due struct {
		k      typingKey
		typing bool
	}
	var dues []due
	h.mu.Lock()
	for k, ty := range h.typing {
		switch {
		case !now.Before(ty.until):
			delete(h.typing, k)
			dues = append(dues, due{k, false})
		case now.Sub(ty.announced) >= h.r.cfg.TypingPing:
			ty.announced = now
			dues = append(dues, due{k, true})
		}
	}
	h.mu.Unlock()
	for _, d := range dues {
		if err := h.announce(h.ctx, d.k, d.typing, func() {}); err != nil {
			// Remote servers time the user out themselves (Synapse: 60 s).
			h.r.m.typingTimerFailures.Inc()
			h.r.log.Warn("announcing a typing timeout or ping", "room", d.k.room, "user", d.k.user, "typing", d.typing, "err", err)
		}
	}
}

// Close stops the timers and waits for what was written to be acknowledged.
func (h *typingHandler) Close(ctx context.Context) error {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	// Timers stuck past ctx (the store hangs) are cut off.
	stopCutting := context.AfterFunc(ctx, h.cancel)
	err := h.timers.Wait()
	stopCutting()
	defer h.cancel()
	return errors.Join(err, h.r.out.Settle(ctx))
}
