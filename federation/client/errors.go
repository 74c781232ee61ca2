package client

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/fedpipe/fedpipe/federation/discovery"
)

// Kind is what a caller should do about a failed request.
type Kind int

const (
	// KindRetry: a transient failure (network, timeout, 5xx, 429); the client has
	// already retried within the request. Retry soon, or back off if it persists.
	KindRetry Kind = iota + 1
	// KindBackoff: the destination cannot take our requests now (401, 403, 404,
	// M_UNRECOGNIZED, TLS or DNS failure, refused address). Back it off.
	KindBackoff
	// KindFatal: the destination says our request is wrong (400, 413): a bug on
	// our side. Retrying the same bytes cannot help.
	KindFatal
)

func (k Kind) String() string {
	switch k {
	case KindRetry:
		return "retry"
	case KindBackoff:
		return "backoff"
	case KindFatal:
		return "fatal"
	}
	return "unknown"
}

// Error is a failed federation request.
type Error struct {
	Kind Kind
	// Status is the HTTP status, 0 when there was no response.
	Status int
	// Errcode is the Matrix errcode of the response body, when there was one.
	Errcode string
	// RetryAfter is the server's requested delay (429 retry_after_ms).
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("%s (status %d %s): %v", e.Kind, e.Status, e.Errcode, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Kind, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// KindOf classifies any error from SendTransaction; errors that are not *Error
// (context cancellation) are KindRetry.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindRetry
}

// ErrDeniedAddress is wrapped when a server name resolves to an address in a
// denied range (private, loopback, link-local…) that is not explicitly allowed.
var ErrDeniedAddress = errors.New("address is in a denied range")

// classifyTransport decides the kind of an error that produced no response.
func classifyTransport(err error) *Error {
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.Is(err, ErrDeniedAddress), errors.Is(err, discovery.ErrResolve),
		errors.As(err, &certErr), errors.As(err, &unknownAuth), errors.As(err, &hostErr), errors.As(err, &invalid):
		return &Error{Kind: KindBackoff, Err: err}
	default:
		return &Error{Kind: KindRetry, Err: err}
	}
}
