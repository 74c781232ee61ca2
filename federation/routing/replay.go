package routing

// Positions says how far a room's membership has got in its stream, so that a
// replayed room record (after a crash, a rebalance, or an offset reset) neither
// corrupts the stored membership nor routes an event with the wrong state.
//
// The router stores every change of a user's joined-ness with its stream
// position (a history), the current joined users, and the room's last applied
// position, all in one transaction. Replay then follows two rules:
//   - A membership delta older than the state in memory is skipped; one older
//     than the stored state is applied in memory only (the store already has it);
//     any other delta is applied and stored. Deltas set an absolute membership,
//     so applying one twice is harmless: several deltas of one position (a state
//     reset) are all applied even when the position equals the last one.
//   - An event needs the state before it. Deltas of position N follow the event
//     of position N, so normally memory holds exactly that state. If memory
//     already holds a delta at or after the event's position, the event is being
//     replayed: the state before it is rebuilt from the stored history, and
//     memory then moves forward again with the replayed deltas.
//
// So a replayed event is routed to the same destinations as the first time,
// including an event whose own delta was stored just before a crash.
type Positions struct {
	// Applied: the state in memory holds every membership delta at positions ≤ Applied
	// and none after.
	Applied int64
	// Stored: the stored state holds every membership delta at positions ≤ Stored.
	Stored int64
}

// NeedsRewind reports whether an event at position pos must be routed from
// state rebuilt as of pos-1, because memory holds deltas from pos or later.
func (p Positions) NeedsRewind(pos int64) bool { return p.Applied >= pos }

// DeltaAction is what to do with a membership delta.
type DeltaAction int

const (
	// DeltaSkip: memory holds later state already; the delta is a replay.
	DeltaSkip DeltaAction = iota
	// DeltaApply: apply in memory only; the store holds the delta already.
	DeltaApply
	// DeltaApplyAndStore: apply in memory and store it with the position.
	DeltaApplyAndStore
)

// Delta decides what to do with a membership delta at position pos.
func (p Positions) Delta(pos int64) DeltaAction {
	switch {
	case pos < p.Applied:
		return DeltaSkip
	case pos < p.Stored:
		return DeltaApply
	default:
		return DeltaApplyAndStore
	}
}
