package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// FetchStatus asks the admin API at base (http://host:port) for its status,
// with token when it is set.
func FetchStatus(ctx context.Context, base, token string) (Status, error) {
	var st Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/_fedpipe/admin/v1/status", nil)
	if err != nil {
		return st, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, fmt.Errorf("asking %s for its status: %w", base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return st, fmt.Errorf("asking %s for its status: %s: %s", base, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("reading the status from %s: %w", base, err)
	}
	return st, nil
}

// WriteTables prints the status page's content as tables. Partitions are
// listed only where something waits (all caught up is one line per group).
func WriteTables(w io.Writer, st Status) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }
	p("fedpipe %s\tstages: %s\tup %s\n\n", st.Instance, strings.Join(st.Stages, ","), human(st.Now.Sub(st.Started)))
	for _, e := range st.Errors {
		p("could not read: %s\n", e)
	}
	p("GROUP\tSTATE\tMEMBERS\tLAG\tSTALLED\n")
	for _, g := range st.Groups {
		state := g.State
		if g.Error != "" {
			state = "error: " + g.Error
		}
		p("%s\t%s\t%d\t%d\t%d\n", g.ID, state, len(g.Members), g.Lag, g.Stalled)
	}
	p("\nGROUP\tPARTITION\tCOMMITTED\tEND\tLAG\tSTATE\tOWNER\n")
	waiting := 0
	for _, g := range st.Groups {
		for _, pt := range g.Partitions {
			if pt.Lag == 0 {
				continue
			}
			waiting++
			state := pt.State
			if pt.StalledFor > 0 {
				state += " " + human(pt.StalledFor)
			}
			p("%s\t%s/%d\t%d\t%d\t%d\t%s\t%s\n", g.ID, pt.Topic, pt.Partition, pt.Committed, pt.End, pt.Lag, state, or(pt.Owner, "none"))
		}
	}
	if waiting == 0 {
		p("(every partition caught up)\n")
	}
	p("\nDESTINATION\tSTATE\tBACKOFF\tFAILING SINCE\tNEXT TRY\tCATCH-UP ROOMS\n")
	for _, d := range st.Troubled {
		state := "backing off"
		if d.Paused {
			state = "paused"
		}
		since, next := "", ""
		if d.FailureTS != nil {
			since = human(st.Now.Sub(time.UnixMilli(*d.FailureTS))) + " ago"
		}
		if d.RetryNextTS > 0 {
			next = "in " + human(time.UnixMilli(d.RetryNextTS).Sub(st.Now))
		}
		p("%s\t%s\t%s\t%s\t%s\t%d\n", d.Destination.Destination, state, human(time.Duration(d.RetryInterval)*time.Millisecond), since, next, d.CatchUpRooms)
	}
	p("(%d of %d destinations backing off or paused)\n", st.TroubledTotal, st.Destinations)
	p("\nDEAD LETTERS\t%d in %s\n", st.DeadLetters.Total, st.DeadLetters.Topic)
	topics := make([]string, 0, len(st.DeadLetters.BySourceTopic))
	for t := range st.DeadLetters.BySourceTopic {
		topics = append(topics, t)
	}
	slices.Sort(topics)
	for _, t := range topics {
		p("  from %s\t%d\n", t, st.DeadLetters.BySourceTopic[t])
	}
	for _, d := range st.DeadLetters.Latest {
		p("  %s\t%d/%d\t%s\t%s\n", d.Time.UTC().Format("2006-01-02 15:04:05"), d.Partition, d.Offset, d.SourceTopic, d.Reason)
	}
	if len(st.Stalls) > 0 {
		p("\nSTALLED\tPARTITION\tLAG\tFOR\tOWNER\n")
		for _, s := range st.Stalls {
			p("%s\t%s/%d\t%d\t%s\t%s\n", s.Group, s.Topic, s.Partition, s.Lag, human(s.StalledFor), or(s.Owner, "none"))
		}
	}
	return tw.Flush()
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
