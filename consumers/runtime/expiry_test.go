package runtime_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
)

// A member that owns every partition and then goes silent (a process frozen or
// cut off: no heartbeat, no LeaveGroup) is expired by the coordinator after its
// session timeout, and a new member takes its partitions and handles their
// records (about 1 s after it joins, on kfake and on Apache Kafka alike).
func TestSilentMemberIsExpiredAndItsPartitionsMove(t *testing.T) {
	k := setup(t, 2)
	produce(t, k.Addr, k.Topic("in"), 20)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := &kafka.Client{Addr: kafka.TCP(k.Addr)}
	join := &kafka.JoinGroupRequest{GroupID: k.Group("g"), SessionTimeout: time.Second, RebalanceTimeout: time.Second, ProtocolType: "consumer",
		Protocols: []kafka.GroupProtocol{{Name: "range", Metadata: kafka.GroupProtocolSubscription{Topics: []string{k.Topic("in")}}}}}
	var jr *kafka.JoinGroupResponse
	var err error
	// A fresh Apache broker answers NOT_COORDINATOR or COORDINATOR_NOT_AVAILABLE
	// until it has created and loaded __consumer_offsets: retry those, as
	// kafka-go's ConsumerGroup does.
	for {
		jr, err = c.JoinGroup(ctx, join)
		if err == nil && errors.Is(jr.Error, kafka.MemberIDRequired) {
			join.MemberID = jr.MemberID
			continue
		}
		if err == nil {
			err = jr.Error
		}
		var ke kafka.Error
		if err == nil || !errors.As(err, &ke) || !ke.Temporary() || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("joining the silent member: %v", err)
	}
	sr, err := c.SyncGroup(ctx, &kafka.SyncGroupRequest{GroupID: k.Group("g"), GenerationID: jr.GenerationID, MemberID: jr.MemberID, ProtocolType: "consumer", ProtocolName: "range",
		Assignments: []kafka.SyncGroupRequestAssignment{{MemberID: jr.MemberID, Assignment: kafka.GroupProtocolAssignment{AssignedPartitions: map[string][]int{k.Topic("in"): {0, 1}}}}}})
	if err == nil {
		err = sr.Error
	}
	if err != nil {
		t.Fatalf("syncing the silent member: %v", err)
	}
	// It never heartbeats again. A real member joins and must end up with
	// both partitions.
	r := newRecorder("a")
	start := time.Now()
	member(t, k, r, k.Topic("dead"))
	testenv.Eventually(t, 20*time.Second, "every record handled once the silent member expired", func() bool { return r.count() == 20 })
	t.Logf("records handled %s after the new member started", time.Since(start).Round(10*time.Millisecond))
}
