// Package conformance checks what fedpipe puts on the wire against the Matrix
// specification's own schemas (the server-server API definitions kept beside the
// checkout in shared/matrix-spec). It has no code of its own, only tests.
package conformance
