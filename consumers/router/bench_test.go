package router_test

import (
	"testing"
	"time"

	"github.com/fedpipe/fedpipe/internal/testing/loadgen"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// BenchmarkRouterThroughput routes a pre-published workload end to end (room
// records in, outbound records acknowledged, offsets committed) and reports
// room records per second. Run with -bench Router -benchtime 1x.
func BenchmarkRouterThroughput(b *testing.B) {
	for range b.N {
		b.StopTimer()
		e := newEnv(b)
		plan, err := loadgen.Generate(loadgen.Config{LocalServer: ourServer,
			RemoteServers: []string{"one.test", "two.test", "three.test", "four.test", "five.test", "six.test"},
			Rooms:         50, Events: 20000, ServersPerRoom: 3, Seed: 11, PDUPadding: 200})
		if err != nil {
			b.Fatal(err)
		}
		msgs := planRecords(b, plan)
		e.publish(b, msgs)
		b.StartTimer()
		start := time.Now()
		stop := e.runRouter(b, "fedpipe-router")
		testenv.Eventually(b, 120*time.Second, "the router to handle every room record", func() bool { return e.caughtUp(b, "fedpipe-router") })
		elapsed := time.Since(start)
		stop()
		b.ReportMetric(float64(len(msgs))/elapsed.Seconds(), "records/s")
		b.ReportMetric(float64(plan.Expected)/elapsed.Seconds(), "outbound/s")
	}
}
