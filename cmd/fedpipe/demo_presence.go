package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"time"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/internal/testing/loadgen"
	"github.com/fedpipe/fedpipe/producers/ingest"
)

// presenceReport is which remote servers were told each local user's presence
// of this run, against the servers sharing a room with the user.
type presenceReport struct {
	want, told          map[string]map[string]bool // server → users
	missing, unexpected int
}

func (r presenceReport) ok() bool { return r.missing == 0 && r.unexpected == 0 }

func (r presenceReport) print(w io.Writer) {
	servers := make([]string, 0, len(r.want))
	for s := range r.want {
		servers = append(servers, s)
	}
	sort.Strings(servers)
	fmt.Fprintf(w, "%-20s %8s %8s %8s %10s\n", "presence", "users", "told", "missing", "unexpected")
	for _, s := range servers {
		var told, missing, unexpected int
		for u := range r.want[s] {
			if r.told[s][u] {
				told++
			} else {
				missing++
			}
		}
		for u := range r.told[s] {
			if !r.want[s][u] {
				unexpected++
			}
		}
		fmt.Fprintf(w, "%-20s %8d %8d %8d %10d\n", s, len(r.want[s]), told, missing, unexpected)
	}
}

// presence has every local user of the plan sync and set itself online, with
// a status message naming this run, through the ingest API (as a sync worker
// would),
// and waits until every server sharing
// a room with a user has been told, or the deadline passes.
func (d *demo) presence(ctx context.Context, plan *loadgen.Plan, base string, deadline time.Time, stdout io.Writer) (presenceReport, error) {
	status := fmt.Sprintf("demo %d", time.Now().UnixNano())
	users := plan.LocalUsers()
	r := presenceReport{want: map[string]map[string]bool{}}
	for _, s := range d.recv.Names() {
		r.want[s] = map[string]bool{}
	}
	var updates []map[string]any
	for _, u := range users {
		// Syncing, as a client would be: a user who does not sync is offline.
		updates = append(updates, map[string]any{"kind": "user_sync", "user_id": u, "syncing": true},
			map[string]any{"kind": "set_presence", "user_id": u, "presence": "online", "status_msg": status})
		for _, s := range plan.SharingServers(u) {
			r.want[s][u] = true
		}
	}
	if err := postUserSync(ctx, base, d.cfg.Ingest.Token, updates); err != nil {
		return r, err
	}
	fmt.Fprintf(stdout, "demo: set %d local users online\n", len(users))
	for {
		r.told = d.toldOnline(status)
		r.missing, r.unexpected = 0, 0
		for s, us := range r.want {
			for u := range us {
				if !r.told[s][u] {
					r.missing++
				}
			}
			for u := range r.told[s] {
				if !us[u] {
					r.unexpected++
				}
			}
		}
		if r.missing == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return r, nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// toldOnline reads, per simulated server, the users it was told are online
// with status (this run's).
func (d *demo) toldOnline(status string) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, s := range d.recv.Names() {
		out[s] = map[string]bool{}
		for _, tx := range d.recv.Transactions(s) {
			for _, e := range tx.EDUs {
				if e.Type != edu.TypePresence {
					continue
				}
				var c struct {
					Push []struct {
						UserID    string `json:"user_id"`
						Presence  string `json:"presence"`
						StatusMsg string `json:"status_msg"`
					} `json:"push"`
				}
				if json.Unmarshal(e.Content, &c) != nil {
					continue
				}
				for _, p := range c.Push {
					if p.Presence == "online" && p.StatusMsg == status {
						out[s][p.UserID] = true
					}
				}
			}
		}
	}
	return out
}

// postUserSync sends presence updates to the ingest API as a sync worker would.
func postUserSync(ctx context.Context, base, token string, updates []map[string]any) error {
	body, err := json.Marshal(map[string]any{"instance": "demo", "updates": updates})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+ingest.UserSyncPath, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("posting presence: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("posting presence: ingest answered %d: %s", resp.StatusCode, msg)
	}
	return nil
}
