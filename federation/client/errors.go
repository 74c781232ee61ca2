package client

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/fedpipe/fedpipe/federation/discovery"
	"github.com/fedpipe/fedpipe/federation/txn"
)

// Error is a failed federation request.
type Error struct {
	// Kind is what the failure means for the destination.
	Kind txn.Outcome
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

// Outcome implements the interface txn.OutcomeOf reads: the destination
// queue learns what a failed send means from the error itself.
func (e *Error) Outcome() txn.Outcome { return e.Kind }

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
		return &Error{Kind: txn.Backoff, Err: err}
	default:
		return &Error{Kind: txn.Retry, Err: err}
	}
}
