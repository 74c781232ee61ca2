// Package testreceiver simulates remote Matrix homeservers: one real HTTPS server
// on loopback hosting any number of server names, which verifies every request's
// X-Matrix signature, enforces the specification's limits, answers 429 to a
// second concurrent transaction from one origin as Synapse does, records what
// arrives per destination, dedupes by transaction id and injects faults on demand.
// Pipeline tests and `fedpipe demo` use it as the remote side of federation.
package testreceiver
