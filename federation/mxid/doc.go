// Package mxid is the grammar of Matrix identifiers (the specification's
// appendix): server names, user IDs, room IDs and event IDs. It is pure: no
// Kafka, no SQL, no network.
//
// Two strengths of user ID check exist because fedpipe's stages have always
// differed, and each keeps its behaviour:
//   - CheckUserID, CheckRoomID and CheckEventID are strict: the full grammar,
//     the server name included. The outbox and the typing library check what a
//     homeserver hands over with them.
//   - LooksLikeUserID, ServerOf and ServerPart are lenient: the shape
//     @localpart:server only, or just the part after the first colon, for
//     records already inside the pipeline (presence input, room state keys),
//     where refusing a record that an older check let in would strand it.
//     They differ at the edges (an empty localpart, a missing @), which the
//     tests pin.
package mxid
