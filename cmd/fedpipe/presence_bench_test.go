package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

// BenchmarkPresenceStorm: 10,000 local users, each in 10 rooms, among 200
// remote servers (each room holds about 100 local users and 20 servers), all
// come online at once. It reports presence entries delivered per second,
// m.presence EDUs and bytes per transaction, and the router's time and the
// process's CPU per update. Memberships are written straight into the
// router's tables (the setup is not what is measured); the storm goes through
// the usersync topic, the presence stage, PostgreSQL, the relay, the router,
// the outbound topic and the sender to loopback HTTPS receivers.
// FEDPIPE_BENCH_USERS/SERVERS/ROOMS scale it.
//
//	go test -run '^$' -bench PresenceStorm -benchtime 1x -timeout 30m ./cmd/fedpipe
func BenchmarkPresenceStorm(b *testing.B) {
	users, servers, rooms := envInt("FEDPIPE_BENCH_USERS", 10000), envInt("FEDPIPE_BENCH_SERVERS", 200), envInt("FEDPIPE_BENCH_ROOMS", 1000)
	for i := 0; i < b.N; i++ {
		for unit, v := range presenceStorm(b, users, servers, rooms) {
			b.ReportMetric(v, unit)
		}
	}
}

// The presence storm's run and checks (every (server, user) pair told), at a
// small size, in every test run.
func TestPresenceStormBenchmarkChecksAtSmallSize(t *testing.T) {
	if f := presenceStorm(t, 300, 20, 40); f["entries/s"] <= 0 {
		t.Fatalf("no figures: %v", f)
	}
}

// presenceStorm runs the storm and returns its figures by unit.
func presenceStorm(tb testing.TB, users, servers, rooms int) map[string]float64 {
	tb.Helper()
	const roomsPerUser, serversPerRoom = 10, 20
	b, isBench := tb.(*testing.B)
	figures := map[string]float64{}
	p := newPipeline(tb, remotes(servers))
	ctx := context.Background()
	// Memberships: user u is in rooms (u + k·101) mod rooms; each room has
	// serversPerRoom remote servers, one user each.
	rng := rand.New(rand.NewPCG(7, 11))
	var members [][]any
	roomServers := make([][]string, rooms)
	for r := range rooms {
		for _, s := range rng.Perm(servers)[:serversPerRoom] {
			srv := fmt.Sprintf("remote%d.test", s)
			roomServers[r] = append(roomServers[r], srv)
			members = append(members, []any{fmt.Sprintf("!r%d:local.test", r), fmt.Sprintf("@x:%s", srv)})
		}
	}
	want := 0 // (user, server) pairs: the entries a perfect sender delivers once
	userID := func(u int) string { return fmt.Sprintf("@user%d:local.test", u) }
	for u := range users {
		dests := map[string]bool{}
		for k := range roomsPerUser {
			r := (u + k*101) % rooms
			members = append(members, []any{fmt.Sprintf("!r%d:local.test", r), userID(u)})
			for _, s := range roomServers[r] {
				dests[s] = true
			}
		}
		want += len(dests)
	}
	if _, err := p.in.pool.CopyFrom(ctx, pgx.Identifier{"router_room_members"}, []string{"room_id", "user_id"}, pgx.CopyFromRows(members)); err != nil {
		tb.Fatal(err)
	}
	if _, err := p.in.pool.Exec(ctx, `ANALYZE router_room_members`); err != nil {
		tb.Fatal(err)
	}
	p.start("relay", "presence", "sender")
	p.start("router")
	routerReg := p.regs[len(p.regs)-1]

	w := kafkaio.NewWriter(p.in.brokers, schema.Topic(p.cfg.Kafka.TopicPrefix, "usersync"))
	defer w.Close()
	msgs := make([]kafka.Message, 0, users)
	on := true
	for u := range users {
		rec := schema.UserSyncRecord{V: 1, Kind: schema.KindUserSync, Instance: fmt.Sprintf("sync%d", u%8), UserID: userID(u), Syncing: &on, TS: time.Now().UnixMilli()}
		v, err := rec.Marshal()
		if err != nil {
			tb.Fatal(err)
		}
		msgs = append(msgs, kafka.Message{Key: []byte(rec.Instance), Value: v})
	}
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	if isBench {
		b.ResetTimer()
	}
	start := time.Now()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		tb.Fatal(err)
	}
	testenv.Eventually(tb, 30*time.Minute, "every user online", func() bool {
		var n int
		noQueryError(tb, p.in.pool.QueryRow(ctx, `SELECT count(*) FROM presence_stream WHERE state = 'online'`).Scan(&n))
		return n == users
	})
	online := time.Since(start)
	testenv.Eventually(tb, 30*time.Minute, "storm delivered", func() bool {
		var seq, pos int64
		noQueryError(tb, p.in.pool.QueryRow(ctx, `SELECT last_value FROM events_stream_seq`).Scan(&seq))
		noQueryError(tb, p.in.pool.QueryRow(ctx, `SELECT COALESCE((SELECT position FROM relay_positions WHERE stream = 'presence'), 0)`).Scan(&pos))
		return pos >= seq && groupCaughtUp(tb, p.cfg.Kafka.Brokers[0], groupID(p.cfg.Kafka.TopicPrefix, routerGroup), schema.Topic(p.cfg.Kafka.TopicPrefix, "presence")) &&
			groupCaughtUp(tb, p.cfg.Kafka.Brokers[0], groupID(p.cfg.Kafka.TopicPrefix, senderGroup), schema.Topic(p.cfg.Kafka.TopicPrefix, "outbound"))
	})
	if isBench {
		b.StopTimer()
	}
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano()-ru0.Utime.Nano()+ru1.Stime.Nano()-ru0.Stime.Nano()) * time.Nanosecond

	// What arrived: entries, EDUs and bytes per transaction, the last arrival.
	var entries, edus, txns, eduBytes int
	var last time.Time
	got := map[string]bool{}
	for _, dest := range p.recv.Names() {
		for _, tx := range p.recv.Transactions(dest) {
			txns++
			if tx.At.After(last) {
				last = tx.At
			}
			for _, e := range tx.EDUs {
				if e.Type != "m.presence" {
					continue
				}
				edus++
				eduBytes += len(e.Content)
				var c struct {
					Push []struct {
						UserID string `json:"user_id"`
					} `json:"push"`
				}
				if err := json.Unmarshal(e.Content, &c); err != nil {
					tb.Fatal(err)
				}
				entries += len(c.Push)
				for _, u := range c.Push {
					got[dest+" "+u.UserID] = true
				}
			}
		}
	}
	if len(got) != want {
		tb.Fatalf("%d (server, user) pairs told, want %d", len(got), want)
	}
	elapsed := last.Sub(start)
	route := histogram(routerReg, "fedpipe_router_presence_route_seconds", nil)
	if route == nil {
		tb.Fatal("no metric fedpipe_router_presence_route_seconds")
	}
	routeSeconds, batches := route.GetSampleSum(), route.GetSampleCount()
	figures["entries/s"] = float64(entries) / elapsed.Seconds()
	figures["EDUs/txn"] = float64(edus) / float64(txns)
	figures["entries/txn"] = float64(entries) / float64(txns)
	figures["EDU-bytes/txn"] = float64(eduBytes) / float64(txns)
	figures["router-µs/update"] = float64(routeSeconds) / float64(users) * 1e6
	figures["process-CPU-µs/update"] = float64(cpu.Microseconds()) / float64(users)
	tb.Logf("%d users × %d rooms among %d servers: %d (user, server) pairs; %d entries (%.2f%% duplicates) in %d transactions, %d EDUs; all online in the presence stream after %s, all delivered after %s; router: %d batches, %s routing; process CPU %s",
		users, roomsPerUser, servers, want, entries, 100*float64(entries-want)/float64(want), txns, edus, online.Round(time.Millisecond), elapsed.Round(time.Millisecond),
		batches, time.Duration(routeSeconds*float64(time.Second)).Round(time.Millisecond), cpu.Round(time.Millisecond))
	return figures
}
