package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/internal/testing/loadgen"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// membership is the router's stored joined members, as text to compare.
func (p *pipeline) membership(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, q := range []string{
		`SELECT room_id || ' ' || user_id FROM router_room_members ORDER BY 1`,
	} {
		rows, err := p.in.pool.Query(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			b.WriteString(s + "\n")
		}
		rows.Close()
	}
	return b.String()
}

// lastPositions is router_rooms as SQL VALUES rows.
func (p *pipeline) lastPositions(t *testing.T) string {
	t.Helper()
	var rows []string
	r, err := p.in.pool.Query(context.Background(), `SELECT room_id, last_position FROM router_rooms`)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for r.Next() {
		var room string
		var pos int64
		if err := r.Scan(&room, &pos); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, fmt.Sprintf("('%s', %d::bigint)", strings.ReplaceAll(room, "'", "''"), pos))
	}
	return strings.Join(rows, ", ")
}

// fedpipe rebuild router refuses while the router runs; with it stopped and
// its tables emptied, it rebuilds them from the state topic exactly as they
// were, and routing goes on as before: every planned delivery arrives, none
// unexpected.
func TestRebuildRouterFromTheStateTopic(t *testing.T) {
	p := newPipeline(t, remotes(5))
	p.start("relay", "sender")
	stopRouter := p.start("router")
	plan := p.plan(30, 3000, 11)
	persist := loadgen.PoolPersister(p.in.pool)
	twoThirds := 2 * len(plan.Events) / 3
	for i := 0; i < twoThirds; i += 100 {
		if err := persist(context.Background(), plan.Events[i:min(i+100, twoThirds)]); err != nil {
			t.Fatal(err)
		}
	}
	h := &presenceHarness{pipeline: p}
	h.waitRouted()
	args := []string{"rebuild", "router", "--kafka.brokers=" + p.k.Addr, "--kafka.topic_prefix=" + p.cfg.Kafka.TopicPrefix,
		"--database.url=" + p.cfg.Database.URL, "--data_dir=" + p.cfg.DataDir, "--log_level=warn"}
	if code, out := runCode(args...); code == 0 || !strings.Contains(out, "stop them first") {
		t.Fatalf("rebuild beside a running router exits %d:\n%s", code, out)
	}
	if err := stopRouter(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the router group empty", func() bool {
		code, _ := runCode("offsets", "show", "--group="+groupID(p.cfg.Kafka.TopicPrefix, routerGroup), "--all-topics", "--kafka.brokers="+p.k.Addr)
		return code == 0
	})
	before := p.membership(t)
	lastPositions := p.lastPositions(t)
	if _, err := p.in.pool.Exec(context.Background(), `TRUNCATE router_rooms, router_room_members, router_membership_changes`); err != nil {
		t.Fatal(err)
	}
	var out string
	testenv.Eventually(t, 30*time.Second, "the rebuild to run (the group's last member gone)", func() bool {
		var code int
		code, out = runCode(args...)
		return code == 0
	})
	if !strings.Contains(out, "rebuilt the router's membership") || !strings.Contains(out, "records/s") {
		t.Fatalf("rebuild printed:\n%s", out)
	}
	if after := p.membership(t); after != before {
		t.Fatalf("membership after the rebuild differs:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// A room's last position becomes its newest membership delta, never
	// earlier than the router had it (the router moves it only when a
	// user's joined-ness changes).
	var earlier int
	if err := p.in.pool.QueryRow(context.Background(), `SELECT count(*) FROM router_rooms r JOIN (VALUES `+lastPositions+`) AS b(room_id, pos) USING (room_id) WHERE r.last_position < b.pos`).Scan(&earlier); err != nil || earlier != 0 {
		t.Fatalf("%d rooms' last position moved back (%v)", earlier, err)
	}
	p.start("router")
	for i := twoThirds; i < len(plan.Events); i += 100 {
		if err := persist(context.Background(), plan.Events[i:min(i+100, len(plan.Events))]); err != nil {
			t.Fatal(err)
		}
	}
	rep := p.waitDelivered(plan, 90*time.Second)
	if !rep.OK() {
		rep.Print(testWriter{t})
		t.Fatal("deliveries wrong after the rebuild")
	}
	t.Logf("%s", strings.TrimSpace(out[strings.LastIndex(out, "rebuilt"):]))
}

// fedpipe resend: a remote that lost its data gets, through catch-up, the
// latest of our events in each room it is joined to, and no other server
// gets anything.
func TestResendToADestinationThatLostItsData(t *testing.T) {
	p := newPipeline(t, remotes(3))
	p.start("relay", "router", "sender")
	plan := p.plan(20, 1000, 5)
	if _, err := plan.Ingest(context.Background(), loadgen.PoolPersister(p.in.pool), 100, nil); err != nil {
		t.Fatal(err)
	}
	p.waitDelivered(plan, 60*time.Second)
	var want []string
	rows, err := p.in.pool.Query(context.Background(), `SELECT DISTINCT ON (room_id) json FROM events
		WHERE origin = 'local.test' AND room_id IN (SELECT room_id FROM router_room_members WHERE server = 'remote0.test')
		ORDER BY room_id, stream_ordering DESC`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	rows.Close()
	if len(want) == 0 {
		t.Fatal("remote0.test shares no room: the plan tests nothing")
	}
	p.recv.Reset() // remote0.test lost its data (and the others' view is cleared too)
	code, out := runCode("resend", "--destination=remote0.test", "--from-position=0", "--server_name=local.test",
		"--kafka.brokers="+p.k.Addr, "--kafka.topic_prefix="+p.cfg.Kafka.TopicPrefix, "--database.url="+p.cfg.Database.URL, "--data_dir="+p.cfg.DataDir, "--log_level=warn")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("of %d rooms recorded", len(want))) {
		t.Fatalf("resend exits %d:\n%s", code, out)
	}
	got := func() []string { // the PDUs, byte for byte as stored
		var pdus []string
		for _, pdu := range p.recv.PDUs("remote0.test") {
			pdus = append(pdus, string(pdu))
		}
		sort.Strings(pdus)
		return pdus
	}
	sort.Strings(want)
	t.Cleanup(func() {
		var n int
		noQueryError(t, p.in.pool.QueryRow(context.Background(), `SELECT count(*) FROM sender_catchup WHERE destination = 'remote0.test'`).Scan(&n))
		if t.Failed() {
			t.Logf("catch-up rows left: %d; got %d PDUs, want %d; requests %d", n, len(got()), len(want), p.recv.Requests("remote0.test"))
		}
	})
	testenv.Eventually(t, 60*time.Second, "remote0.test sent the latest event of each of its rooms", func() bool {
		return strings.Join(got(), "\n") == strings.Join(want, "\n")
	})
	if n := len(p.recv.PDUs("remote1.test")) + len(p.recv.PDUs("remote2.test")); n != 0 {
		t.Fatalf("the other servers got %d PDUs", n)
	}
	t.Logf("%s", strings.TrimSpace(out))
}
