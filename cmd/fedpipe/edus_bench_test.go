package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/producers/typing"
	"github.com/fedpipe/fedpipe/schema"
)

// perServer sums what the receivers accepted per destination: transactions,
// EDUs of eduType, and body bytes.
func perServer(p *pipeline, eduType string) (txns, edus, bytes float64) {
	names := p.recv.Names()
	for _, d := range names {
		for _, r := range p.recv.Transactions(d) {
			txns++
			bytes += float64(r.BodyBytes)
			for _, e := range r.EDUs {
				if e.Type == eduType {
					edus++
				}
			}
		}
	}
	n := float64(len(names))
	return txns / n, edus / n, bytes / n
}

type fanoutResult struct {
	elapsed                 time.Duration
	txns, edus, bytesPerSrv float64
}

// toDeviceFanout sends one to-device message to devices devices of users on
// servers servers (one user per server) and waits until every server has it.
func toDeviceFanout(tb testing.TB, servers, devices int) fanoutResult {
	tb.Helper()
	p := newPipeline(tb, remotes(servers))
	p.start("relay", "router", "sender")
	msgs := map[string]map[string]json.RawMessage{}
	for i := 0; i < devices; i++ {
		user := fmt.Sprintf("@u:remote%d.test", i%servers)
		if msgs[user] == nil {
			msgs[user] = map[string]json.RawMessage{}
		}
		// About an olm-encrypted room key's size.
		msgs[user][fmt.Sprintf("DEV%d", i)] = json.RawMessage(`{"algorithm":"m.olm.v1.curve25519-aes-sha2","ciphertext":{"k":{"body":"` + strings.Repeat("A", 700) + `","type":0}}}`)
	}
	start := time.Now()
	if _, err := outbox.SendToDeviceBatch(context.Background(), p.in.pool, "local.test", outbox.ToDevice{Sender: "@alice:local.test", Type: "m.room.encrypted", MessageID: "fanout", Messages: msgs}); err != nil {
		tb.Fatal(err)
	}
	testenv.Eventually(tb, 5*time.Minute, "every server to have the message", func() bool {
		for _, d := range p.recv.Names() {
			if len(p.recv.EDUs(d, edu.TypeDirectToDevice)) == 0 {
				return false
			}
		}
		return true
	})
	r := fanoutResult{elapsed: time.Since(start)}
	r.txns, r.edus, r.bytesPerSrv = perServer(p, edu.TypeDirectToDevice)
	return r
}

// BenchmarkToDeviceFanout: one user sends a message to 1,000 devices of
// users on 200 servers (FEDPIPE_BENCH_DEVICES, FEDPIPE_BENCH_SERVERS).
//
//	go test -run '^$' -bench ToDeviceFanout -benchtime 1x ./cmd/fedpipe
func BenchmarkToDeviceFanout(b *testing.B) {
	for i := 0; i < b.N; i++ {
		r := toDeviceFanout(b, envInt("FEDPIPE_BENCH_SERVERS", 200), envInt("FEDPIPE_BENCH_DEVICES", 1000))
		b.ReportMetric(float64(r.elapsed.Milliseconds()), "ms-to-all")
		b.ReportMetric(r.txns, "txns/server")
		b.ReportMetric(r.edus, "edus/server")
		b.ReportMetric(r.bytesPerSrv, "bytes/server")
	}
}

func TestToDeviceFanoutBenchmarkChecksAtSmallSize(t *testing.T) {
	if r := toDeviceFanout(t, 5, 20); r.edus != 1 || r.txns < 1 {
		t.Fatalf("%+v: want one EDU per server", r)
	}
}

type stormResult struct {
	elapsed                 time.Duration
	txns, edus, bytesPerSrv float64
	rowsLeft                int
}

// deviceListStorm: a user sharing a room with servers servers re-keys
// devices devices at once; it waits until every server has every update and
// the sender's store is empty.
func deviceListStorm(tb testing.TB, servers, devices int) stormResult {
	tb.Helper()
	p := newPipeline(tb, remotes(servers))
	h := &presenceHarness{pipeline: p}
	p.start("relay", "router", "sender", "ingest")
	users := []string{"@alice:local.test"}
	for i := 0; i < servers; i++ {
		users = append(users, fmt.Sprintf("@u:remote%d.test", i))
	}
	h.join("!storm:local.test", users...)
	h.waitRouted()
	updates := make([]outbox.DeviceUpdate, devices)
	for i := range updates {
		updates[i] = outbox.DeviceUpdate{UserID: "@alice:local.test", DeviceID: fmt.Sprintf("DEV%d", i),
			Keys: json.RawMessage(fmt.Sprintf(`{"algorithms":["m.olm.v1.curve25519-aes-sha2"],"device_id":"DEV%d","keys":{"curve25519:DEV%d":"%s"},"signatures":{},"user_id":"@alice:local.test"}`, i, i, strings.Repeat("k", 43)))}
	}
	start := time.Now()
	tx, err := p.in.pool.Begin(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := outbox.UpdateDevices(context.Background(), tx, "local.test", updates); err != nil {
		tb.Fatal(err)
	}
	if err := tx.Commit(context.Background()); err != nil {
		tb.Fatal(err)
	}
	var rows int
	testenv.Eventually(tb, 30*time.Minute, "every server to have every update and the store empty", func() bool {
		for _, d := range p.recv.Names() {
			if len(p.recv.EDUs(d, edu.TypeDeviceListUpdate)) < devices {
				return false
			}
		}
		noQueryError(tb, p.in.pool.QueryRow(context.Background(), `SELECT count(*) FROM sender_device_lists`).Scan(&rows))
		return rows == 0
	})
	r := stormResult{elapsed: time.Since(start), rowsLeft: rows}
	r.txns, r.edus, r.bytesPerSrv = perServer(p, edu.TypeDeviceListUpdate)
	return r
}

// BenchmarkDeviceListStorm: a user with 500 devices re-keys all of them
// while sharing a room with 2,000 servers (FEDPIPE_BENCH_DEVICES,
// FEDPIPE_BENCH_SERVERS scale it).
//
//	go test -run '^$' -bench DeviceListStorm -benchtime 1x -timeout 60m ./cmd/fedpipe
func BenchmarkDeviceListStorm(b *testing.B) {
	for i := 0; i < b.N; i++ {
		r := deviceListStorm(b, envInt("FEDPIPE_BENCH_SERVERS", 2000), envInt("FEDPIPE_BENCH_DEVICES", 500))
		b.ReportMetric(r.elapsed.Seconds(), "s-to-drain")
		b.ReportMetric(r.txns, "txns/server")
		b.ReportMetric(r.edus, "edus/server")
		b.ReportMetric(r.bytesPerSrv, "bytes/server")
		b.ReportMetric(float64(r.rowsLeft), "rows-left")
	}
}

func TestDeviceListStormBenchmarkChecksAtSmallSize(t *testing.T) {
	if r := deviceListStorm(t, 4, 30); r.edus != 30 || r.rowsLeft != 0 {
		t.Fatalf("%+v: want 30 EDUs per server and no rows left", r)
	}
}

type typingResult struct {
	edusPerSecond, cpuPerChange float64
}

// typingFanout: users of ours type in a room of servers servers, changes
// typing notifications; it waits until every server has each user's last
// state, and reports EDUs delivered per second and process CPU per change.
func typingFanout(tb testing.TB, servers, changes int) typingResult {
	tb.Helper()
	p := newPipeline(tb, remotes(servers))
	h := &presenceHarness{pipeline: p}
	p.start("relay", "router", "sender")
	const typists = 10
	users := []string{}
	for i := 0; i < typists; i++ {
		users = append(users, fmt.Sprintf("@t%d:local.test", i))
	}
	for i := 0; i < servers; i++ {
		users = append(users, fmt.Sprintf("@u:remote%d.test", i))
	}
	h.join("!typing:local.test", users...)
	h.waitRouted()
	w := kafkaio.NewWriter(p.cfg.Kafka.Brokers, schema.Topic(p.cfg.Kafka.TopicPrefix, "typing"))
	defer w.Close()
	pub := typing.New(w, "local.test")
	cpu := func() time.Duration {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	startCPU, start := cpu(), time.Now()
	for i := 0; i < changes; i++ {
		if err := pub.Set(context.Background(), "!typing:local.test", users[i%typists], i/typists%2 == 0, 30*time.Second); err != nil {
			tb.Fatal(err)
		}
	}
	last := map[string]bool{}
	for i := changes - typists; i < changes; i++ {
		last[users[i%typists]] = i/typists%2 == 0
	}
	testenv.Eventually(tb, 5*time.Minute, "every server to have every typist's last state", func() bool {
		for _, d := range p.recv.Names() {
			seen := map[string]bool{}
			for _, raw := range p.recv.EDUs(d, edu.TypeTyping) {
				var c edu.Typing
				_ = json.Unmarshal(raw, &c)
				seen[c.UserID] = c.Typing
			}
			for u, on := range last {
				if v, ok := seen[u]; !ok || v != on {
					return false
				}
			}
		}
		return true
	})
	elapsed, used := time.Since(start), cpu()-startCPU
	var edus float64
	for _, d := range p.recv.Names() {
		edus += float64(len(p.recv.EDUs(d, edu.TypeTyping)))
	}
	return typingResult{edusPerSecond: edus / elapsed.Seconds(), cpuPerChange: float64(used.Microseconds()) / float64(changes)}
}

// BenchmarkTypingFanout: typing in a room of 300 servers
// (FEDPIPE_BENCH_SERVERS; FEDPIPE_BENCH_CHANGES changes, default 1,000):
// m.typing EDUs delivered per second and the whole process's CPU (every
// stage and the receivers) per typing change.
//
//	go test -run '^$' -bench TypingFanout -benchtime 1x ./cmd/fedpipe
func BenchmarkTypingFanout(b *testing.B) {
	for i := 0; i < b.N; i++ {
		r := typingFanout(b, envInt("FEDPIPE_BENCH_SERVERS", 300), envInt("FEDPIPE_BENCH_CHANGES", 1000))
		b.ReportMetric(r.edusPerSecond, "edus/s")
		b.ReportMetric(r.cpuPerChange, "cpu-µs/change")
	}
}

func TestTypingFanoutBenchmarkChecksAtSmallSize(t *testing.T) {
	if r := typingFanout(t, 5, 40); r.edusPerSecond <= 0 || r.cpuPerChange <= 0 {
		t.Fatalf("no figures: %+v", r)
	}
}
