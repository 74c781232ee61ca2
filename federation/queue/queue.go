// Package queue runs fedpipe's per-destination federation queues, in the
// shape of Synapse's PerDestinationQueue. A destination owns what it has to
// send (PDUs, EDU slots per kind, the latest presence per user), its send
// loop, its catch-up and its backoff: it batches PDUs and EDUs into
// transactions (≤50 PDUs, ≤100 EDUs, one m.presence EDU with the latest state
// of ≤50 users), keeps one transaction in flight, backs off when it fails
// (persisted, with Synapse's schedule), records what it misses for catch-up
// instead of holding it in memory, and catches up with the latest event per
// room when it is due again. The Manager keeps the registry of destinations,
// supervises their workers and paces catch-up wake-ups. It has no Kafka and
// no SQL: it talks to a Transport and a Store.
package queue

import (
	"context"
	"encoding/json"
	"time"

	"github.com/fedpipe/fedpipe/federation/txn"
)

// Transport sends one transaction. (*client.Client).SendTransaction fits. A
// failure says what it means for the destination through txn.OutcomeOf (an
// error without an outcome is txn.Retry).
type Transport interface {
	SendTransaction(ctx context.Context, t *txn.Transaction) (txn.Response, error)
}

// Fence keeps two sender members from sending to one destination at once. A
// partition moves between members at a rebalance; a member the group expired
// (frozen, cut off from the broker, or slower to drain than the rebalance
// timeout) may still be sending when the next owner starts. A destination's
// worker holds its fence while it runs, and sends only while it holds it.
type Fence interface {
	// Acquire takes dest's fence for this member. It returns nil (and no
	// error) when another member holds it. The returned context ends when the
	// fence is lost (the connection holding it broke): whoever holds it must
	// stop sending at once.
	Acquire(ctx context.Context, dest string) (context.Context, error)
	// Release gives dest's fence back.
	Release(dest string)
}

// CatchUp is a room a destination missed while backing off: its latest event.
type CatchUp struct {
	RoomID   string
	Position int64
	EventID  string
	// PDU is filled by Store.CatchUpRooms.
	PDU json.RawMessage
}

// Store keeps what must survive restarts and move between sender members.
type Store interface {
	// LoadRetry returns the destination's backoff (zero when none).
	LoadRetry(ctx context.Context, dest string) (RetryState, error)
	// SaveRetry stores the destination's backoff; a zero state clears it.
	// It leaves Paused as it is stored.
	SaveRetry(ctx context.Context, dest string, r RetryState) error
	// RecordSuccess notes that the destination accepted PDUs of rooms up to
	// the stream positions given (per room, and the destination's last
	// successful position, the greatest; neither ever moves back).
	RecordSuccess(ctx context.Context, dest string, acked []RoomPosition) error
	// AckedRooms returns, per room, the greatest stream position of the
	// destination's accepted PDUs in it (RecordSuccess, or lowered by an
	// operator's resend).
	AckedRooms(ctx context.Context, dest string) (map[string]int64, error)
	// RecordCatchUp remembers, per room, the latest event the destination missed.
	RecordCatchUp(ctx context.Context, dest string, rooms []CatchUp) error
	// CatchUpRooms returns up to limit of the destination's missed rooms with
	// their latest PDU, oldest position first (PDU nil when the event is not
	// stored), so a destination missing thousands of rooms is caught up in
	// bounded memory.
	CatchUpRooms(ctx context.Context, dest string, limit int) ([]CatchUp, error)
	// ClearCatchUp forgets a room once its event was delivered, unless a later
	// event was recorded meanwhile.
	ClearCatchUp(ctx context.Context, dest string, c CatchUp) error
	// StoredEDUs returns dest's stored EDUs of kind after position after,
	// in position order: at most limit, and past the first at most maxBytes
	// of content.
	StoredEDUs(ctx context.Context, dest string, kind Durable, after int64, limit, maxBytes int) ([]StoredEDU, error)
	// AckEDUs forgets dest's stored EDUs of kind at positions: the
	// destination accepted them (or refused them as malformed).
	AckEDUs(ctx context.Context, dest string, kind Durable, positions []int64) error
	// MarkSending marks dest's stored EDUs of kind at positions as in a
	// transaction being sent (sending), or clears the mark when the
	// destination did not accept it. A mark outliving its sender (killed
	// mid-send) means the destination may hold the EDU: a device-list update
	// chains the user's next update on it. The queue marks only DeviceLists.
	MarkSending(ctx context.Context, dest string, kind Durable, positions []int64, sending bool) error
	// DueDestinations lists up to limit destinations with catch-up rows or
	// stored EDUs whose backoff has ended and that are not paused, in name order after the name after ("" from the
	// start): the caller pages through them, so destinations other members
	// own (or that are busy) cannot hide the rest behind the limit.
	DueDestinations(ctx context.Context, now time.Time, after string, limit int) ([]string, error)
}

// RoomPosition is a stream position in a room.
type RoomPosition struct {
	RoomID   string
	Position int64
}

// PDU is an event for a destination.
type PDU struct {
	RoomID  string
	EventID string
	// Position is the event's stream position: catch-up keeps the latest per
	// room, and the destination's last successful position is stored.
	Position int64
	// JSON is the PDU, sent byte for byte.
	JSON json.RawMessage
}

// EDU is an ephemeral event for a destination. m.presence is not sent this
// way: presence goes through EnqueuePresence, which keeps the latest state
// per user and renders one m.presence EDU per transaction.
type EDU struct {
	txn.EDU
	// Key, when set, makes the EDU keyed: of the pending EDUs with the same
	// type and key only the latest is sent, in the place of the first (typing
	// is keyed by room and user). The router sets it; the queue never reads
	// EDU content.
	Key string
}
