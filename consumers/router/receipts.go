package router

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/consumers/runtime"
	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/federation/routing"
	"github.com/fedpipe/fedpipe/schema"
)

// Receipt pacing, Synapse's (synapse/federation/sender/__init__.py): a
// receipt goes at once to every server of a room with fewer than
// ReceiptSmallRoom remote servers, or for an event younger than
// ReceiptRecentEvent, and to the server of the event's sender; otherwise it
// waits with the room's other receipts and the room's servers are sent them
// one after the other, ReceiptsPerRoomPerSecond a second (faster when that
// would take longer than ReceiptMaxDelay).
const (
	ReceiptSmallRoom         = 10
	ReceiptRecentEvent       = 60 * time.Second
	ReceiptsPerRoomPerSecond = 50
	ReceiptMaxDelay          = 30 * time.Second
)

// receiptHandler routes one partition of <prefix>.receipts.
type receiptHandler struct {
	r   *Router
	now func() time.Time

	mu      sync.Mutex
	waiting map[string]*roomReceipts // by room

	ctx    context.Context // the walks' writes; ends at Close
	cancel context.CancelFunc
	// walks supervises the rooms' walks: Close waits for them and returns
	// their error.
	walks errgroup.Group
}

// roomReceipts are a room's receipts waiting for a paced walk of its
// servers, the latest per (user, thread), and the dones of their records.
type roomReceipts struct {
	receipts map[receiptKey]waitingReceipt
	order    []receiptKey
	dones    []func()
	walking  bool
}

// waitingReceipt is a receipt and the server that had it at once (the
// event sender's), which the walk passes over.
type waitingReceipt struct {
	schema.Receipt
	had string
}

type receiptKey struct{ user, thread string }

func newReceiptHandler(r *Router) *receiptHandler {
	h := &receiptHandler{r: r, now: time.Now, waiting: map[string]*roomReceipts{}}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	return h
}

func (h *receiptHandler) Handle(ctx context.Context, m kafka.Message, done func()) error {
	rec, err := schema.DecodeReceiptRecord(m.Value)
	if err != nil {
		return runtime.Poison(err)
	}
	if server, _ := mxid.ServerOf(rec.UserID); server != h.r.cfg.ServerName {
		return runtime.Poison(fmt.Errorf("%w: receipt of %s, who is not a user of %s", schema.ErrInvalidRecord, rec.UserID, h.r.cfg.ServerName))
	}
	servers, err := h.remoteServers(ctx, rec.RoomID)
	if err != nil {
		return err
	}
	sender, sentAt, err := h.r.store.eventOrigin(ctx, rec.EventIDs[0])
	if err != nil {
		return err
	}
	var now, later []string
	if len(servers) < ReceiptSmallRoom || sentAt > 0 && h.now().Sub(time.UnixMilli(sentAt)) < ReceiptRecentEvent {
		now = servers
	} else {
		for _, s := range servers {
			if s == sender {
				now = append(now, s)
			} else {
				later = append(later, s)
			}
		}
	}
	parts := 0
	if len(now) > 0 {
		parts++
	}
	if len(later) > 0 {
		parts++
	}
	if parts == 0 {
		done()
		return nil
	}
	left := atomic.Int32{}
	left.Store(int32(parts))
	partDone := func() {
		if left.Add(-1) == 0 {
			done()
		}
	}
	if len(now) > 0 {
		if err := h.write(ctx, now, []schema.Receipt{rec.Receipt}, partDone); err != nil {
			return err
		}
		h.r.m.receipts.WithLabelValues("at_once").Add(float64(len(now)))
	}
	if len(later) > 0 {
		had := ""
		if len(now) > 0 {
			had = sender
		}
		h.wait(waitingReceipt{rec.Receipt, had}, partDone)
	}
	return nil
}

// remoteServers are the servers but ours joined to room, as stored.
func (h *receiptHandler) remoteServers(ctx context.Context, room string) ([]string, error) {
	joined, _, err := h.r.store.load(ctx, room)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range routing.NewRoomState(joined...).JoinedServers() {
		if s != h.r.cfg.ServerName {
			out = append(out, s)
		}
	}
	return out, nil
}

// write writes one receipt record with rs to each of dests.
func (h *receiptHandler) write(ctx context.Context, dests []string, rs []schema.Receipt, done func()) error {
	headers := schema.NewHeaders(schema.KindReceipt).WithInstance(h.r.cfg.Instance)
	msgs := make([]kafka.Message, 0, len(dests))
	for _, d := range dests {
		v, err := schema.OutboundRecord{V: schema.SchemaVersion, Kind: schema.KindReceipt, Destination: d, Receipts: rs}.Marshal()
		if err != nil {
			return runtime.Poison(err)
		}
		msgs = append(msgs, headers.Message([]byte(d), v))
	}
	if err := h.r.out.Write(ctx, msgs, done); err != nil {
		return fmt.Errorf("writing receipts to %d servers: %w", len(dests), err)
	}
	return nil
}

// wait keeps r with its room's waiting receipts (a later one of the same
// user and thread replaces it) and starts a walk of the room's servers
// unless one runs: it takes what is waiting when it is done.
func (h *receiptHandler) wait(r waitingReceipt, done func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	w := h.waiting[r.RoomID]
	if w == nil {
		w = &roomReceipts{receipts: map[receiptKey]waitingReceipt{}}
		h.waiting[r.RoomID] = w
	}
	k := receiptKey{r.UserID, r.ThreadID}
	if _, ok := w.receipts[k]; !ok {
		w.order = append(w.order, k)
	}
	w.receipts[k] = r
	w.dones = append(w.dones, done)
	if !w.walking {
		w.walking = true
		h.walks.Go(func() error { return h.walk(r.RoomID) })
	}
}

// walk sends a room's waiting receipts to its servers, paced, until none
// wait. A failed walk is tried again a second later with what waits then
// (the receipts it had, unless replaced by later ones). A walk cut short by
// Close leaves its records undone: the next owner of the partition routes
// them again.
func (h *receiptHandler) walk(room string) error {
	for {
		h.mu.Lock()
		w := h.waiting[room]
		if len(w.order) == 0 {
			delete(h.waiting, room)
			h.mu.Unlock()
			return nil
		}
		rs := make([]waitingReceipt, 0, len(w.order))
		for _, k := range w.order {
			rs = append(rs, w.receipts[k])
		}
		dones := w.dones
		w.receipts, w.order, w.dones = map[receiptKey]waitingReceipt{}, nil, nil
		h.mu.Unlock()
		err := h.walkOnce(room, rs, dones)
		if err == nil {
			continue
		}
		if h.ctx.Err() != nil {
			return nil
		}
		h.r.m.receiptWalkFailures.Inc()
		h.r.log.Warn("sending a room's waiting receipts; trying again", "room", room, "receipts", len(rs), "err", err)
		h.mu.Lock()
		for _, r := range rs {
			k := receiptKey{r.UserID, r.ThreadID}
			if _, newer := w.receipts[k]; !newer {
				w.receipts[k] = r
				w.order = append(w.order, k)
			}
		}
		w.dones = append(w.dones, dones...)
		h.mu.Unlock()
		select {
		case <-h.ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

func (h *receiptHandler) walkOnce(room string, rs []waitingReceipt, dones []func()) error {
	servers, err := h.remoteServers(h.ctx, room)
	if err != nil {
		return err
	}
	allDone := func() {
		for _, d := range dones {
			d()
		}
	}
	if len(servers) == 0 {
		allDone()
		return nil
	}
	interval := min(time.Second/ReceiptsPerRoomPerSecond, ReceiptMaxDelay/time.Duration(len(servers)))
	t := time.NewTicker(interval)
	defer t.Stop()
	sends := make([][]schema.Receipt, len(servers))
	last := -1 // the last server with something to send: its write's acknowledgement is the walk's
	for i, s := range servers {
		for _, r := range rs {
			if r.had != s {
				sends[i] = append(sends[i], r.Receipt)
			}
		}
		if len(sends[i]) > 0 {
			last = i
		}
	}
	if last < 0 {
		allDone()
		return nil
	}
	for i, s := range servers[:last+1] {
		if len(sends[i]) == 0 {
			continue
		}
		done := func() {}
		if i == last {
			done = allDone // the writer acknowledges in order
		}
		if err := h.write(h.ctx, []string{s}, sends[i], done); err != nil {
			return err
		}
		h.r.m.receipts.WithLabelValues("paced").Inc()
		if i < last {
			select {
			case <-h.ctx.Done():
				return h.ctx.Err()
			case <-t.C:
			}
		}
	}
	return nil
}

// Close stops the walks (their records stay undone) and waits for what was
// written to be acknowledged.
func (h *receiptHandler) Close(ctx context.Context) error {
	h.cancel()
	return errors.Join(h.walks.Wait(), h.r.out.Settle(ctx))
}

// eventOrigin is the sender's server and origin_server_ts (0 when unknown)
// of a stored event; "" and 0 for an event not in the events table.
func (s store) eventOrigin(ctx context.Context, eventID string) (server string, ts int64, err error) {
	var sender string
	var at *int64
	err = s.pool.QueryRow(ctx, `SELECT sender, CASE WHEN jsonb_typeof(json::jsonb -> 'origin_server_ts') = 'number'
			THEN (json::jsonb ->> 'origin_server_ts')::numeric::bigint END FROM events WHERE event_id = $1`, eventID).Scan(&sender, &at)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", 0, nil
	}
	if err != nil {
		return "", 0, fmt.Errorf("reading the origin of %s: %w", eventID, err)
	}
	server, _ = mxid.ServerOf(sender)
	if at != nil {
		ts = *at
	}
	return server, ts, nil
}
