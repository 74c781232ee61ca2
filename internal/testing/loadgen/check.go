package loadgen

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
)

// ServerReport is what one remote server got compared with what it should have.
type ServerReport struct {
	Server     string
	Expected   int // (event) deliveries the plan requires for this server
	Delivered  int // distinct expected events that arrived
	Missing    int
	Unexpected int // arrived but not meant for this server
	Duplicates int // arrived more than once
	OutOfOrder int // arrived before an earlier event of the same room (first arrivals)
	Unknown    int // PDUs that are no event of the plan (re-encoded or corrupted bytes)
}

// Report is the comparison for every server.
type Report struct {
	Servers []ServerReport
	// FirstMissing gives up to a few missing (server, event) pairs, for messages.
	FirstMissing []string
}

// OK reports whether every expected delivery happened, nothing unexpected or
// unknown arrived, and every room's events arrived in order.
func (r Report) OK() bool {
	for _, s := range r.Servers {
		if s.Missing > 0 || s.Unexpected > 0 || s.OutOfOrder > 0 || s.Unknown > 0 {
			return false
		}
	}
	return true
}

// Totals sums the per-server figures.
func (r Report) Totals() ServerReport {
	var t ServerReport
	t.Server = "all"
	for _, s := range r.Servers {
		t.Expected += s.Expected
		t.Delivered += s.Delivered
		t.Missing += s.Missing
		t.Unexpected += s.Unexpected
		t.Duplicates += s.Duplicates
		t.OutOfOrder += s.OutOfOrder
		t.Unknown += s.Unknown
	}
	return t
}

// Print writes the report as a table.
func (r Report) Print(w io.Writer) {
	fmt.Fprintf(w, "%-28s %9s %9s %8s %10s %10s %10s %8s\n", "server", "expected", "delivered", "missing", "unexpected", "duplicates", "outoforder", "unknown")
	for _, s := range append(append([]ServerReport(nil), r.Servers...), r.Totals()) {
		fmt.Fprintf(w, "%-28s %9d %9d %8d %10d %10d %10d %8d\n", s.Server, s.Expected, s.Delivered, s.Missing, s.Unexpected, s.Duplicates, s.OutOfOrder, s.Unknown)
	}
	for _, m := range r.FirstMissing {
		fmt.Fprintf(w, "missing: %s\n", m)
	}
}

// Check compares what each server received (PDUs in arrival order) with the plan.
// upTo limits the expectations to the first upTo events (all when < 0), for
// checking a run that was stopped early.
func (p *Plan) Check(received func(server string) []json.RawMessage, upTo int) Report {
	if upTo < 0 || upTo > len(p.Events) {
		upTo = len(p.Events)
	}
	want := map[string]map[int]bool{}
	for _, s := range p.Config.RemoteServers {
		want[s] = map[int]bool{}
	}
	for _, ev := range p.Events[:upTo] {
		for _, d := range ev.Destinations {
			if want[d] == nil {
				want[d] = map[int]bool{}
			}
			want[d][ev.Seq] = true
		}
	}
	var rep Report
	servers := make([]string, 0, len(want))
	for s := range want {
		servers = append(servers, s)
	}
	sort.Strings(servers)
	for _, s := range servers {
		sr := ServerReport{Server: s, Expected: len(want[s])}
		seen := map[int]bool{}
		lastInRoom := map[string]int{}
		for _, pdu := range received(s) {
			seq, ok := p.SeqOf(pdu)
			if !ok {
				sr.Unknown++
				continue
			}
			if seen[seq] {
				sr.Duplicates++
				continue
			}
			seen[seq] = true
			if !want[s][seq] {
				if seq < upTo {
					sr.Unexpected++
				}
				continue
			}
			sr.Delivered++
			room := p.Events[seq].RoomID
			if last, ok := lastInRoom[room]; ok && last > seq {
				sr.OutOfOrder++
			}
			lastInRoom[room] = seq
		}
		sr.Missing = sr.Expected - sr.Delivered
		if sr.Missing > 0 && len(rep.FirstMissing) < 5 {
			for seq := range want[s] {
				if !seen[seq] {
					rep.FirstMissing = append(rep.FirstMissing, fmt.Sprintf("%s event #%d %s (%s)", s, seq, p.Events[seq].EventID, p.Events[seq].Type))
					break
				}
			}
		}
		rep.Servers = append(rep.Servers, sr)
	}
	return rep
}
