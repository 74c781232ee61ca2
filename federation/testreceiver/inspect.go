package testreceiver

import (
	"context"
	"time"

	"github.com/segmentio/encoding/json"
)

// Transactions returns what dest accepted, in arrival order.
func (s *Server) Transactions(dest string) []Received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Received(nil), s.received[dest]...)
}

// PDUs returns every PDU dest accepted, in arrival order.
func (s *Server) PDUs(dest string) []json.RawMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []json.RawMessage
	for _, r := range s.received[dest] {
		out = append(out, r.PDUs...)
	}
	return out
}

// PDUArrivals returns every PDU dest accepted with its arrival time.
func (s *Server) PDUArrivals(dest string) ([]json.RawMessage, []time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var pdus []json.RawMessage
	var at []time.Time
	for _, r := range s.received[dest] {
		for _, p := range r.PDUs {
			pdus = append(pdus, p)
			at = append(at, r.At)
		}
	}
	return pdus, at
}

// EDUs returns the contents of the EDUs of eduType dest accepted, in order.
func (s *Server) EDUs(dest, eduType string) []json.RawMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []json.RawMessage
	for _, r := range s.received[dest] {
		for _, e := range r.EDUs {
			if e.Type == eduType {
				out = append(out, e.Content)
			}
		}
	}
	return out
}

// TotalPDUs counts the PDUs accepted over all destinations.
func (s *Server) TotalPDUs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, rs := range s.received {
		for _, r := range rs {
			n += len(r.PDUs)
		}
	}
	return n
}

// Requests counts every request to dest, rejected ones included.
func (s *Server) Requests(dest string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[dest]
}

// ConcurrentRejections counts 429s for a second transaction from one origin to
// one destination while another was in flight. A correct sender never causes one.
func (s *Server) ConcurrentRejections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rejections
}

// DuplicateTxns counts transactions sent again with an id already accepted.
func (s *Server) DuplicateTxns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.duplicates
}

// Reset forgets everything received (faults and names stay).
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.received = map[string][]Received{}
	s.seen = map[string]bool{}
	s.rejections, s.duplicates = 0, 0
	s.requests = map[string]int{}
}

// WaitFor polls cond until it holds or ctx ends.
func (s *Server) WaitFor(ctx context.Context, cond func(*Server) bool) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !cond(s) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}
