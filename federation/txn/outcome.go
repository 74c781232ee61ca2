package txn

import "errors"

// Outcome is what a failed send of a transaction means for its destination.
// A transport's errors carry it (an Outcome method anywhere in the chain, as
// the federation client's *client.Error has); OutcomeOf reads it.
type Outcome int

const (
	// Retry: a transient failure (network, timeout, 5xx, 429) the transport
	// already retried within the request. Send the same transaction again
	// soon; back the destination off if it persists.
	Retry Outcome = iota + 1
	// Backoff: the destination cannot take our requests now (401, 403, 404,
	// M_UNRECOGNIZED, TLS or DNS failure, refused address). Back it off.
	Backoff
	// Fatal: the destination says the transaction is wrong (400, 413): a bug
	// on our side, and sending the same bytes again cannot help. The
	// transaction is dropped; the destination is not penalised.
	Fatal
)

func (o Outcome) String() string {
	switch o {
	case Retry:
		return "retry"
	case Backoff:
		return "backoff"
	case Fatal:
		return "fatal"
	}
	return "unknown"
}

// OutcomeOf reads the Outcome err carries. An error that carries none (a
// cancelled context, say) is Retry: nothing says the destination is at fault.
func OutcomeOf(err error) Outcome {
	var o interface{ Outcome() Outcome }
	if errors.As(err, &o) {
		return o.Outcome()
	}
	return Retry
}
