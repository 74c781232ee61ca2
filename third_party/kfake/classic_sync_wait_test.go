package kfake

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// A classic member waiting in SyncGroup for a leader that never syncs is not
// expired by its session timer: Kafka keeps a member alive while it awaits a
// join or sync answer (MemberMetadata.shouldKeepAlive), and the pending-sync
// timeout answers it REBALANCE_IN_PROGRESS so it rejoins. Before the fix the
// session timer, armed when its JoinGroup was answered, fired first and removed
// the member with its SyncGroup still waiting: that request was never answered
// (the client only gave up at its own timeout) and the member's id was unknown
// when it came back.
func TestClassicMemberWaitingInSyncIsAnswered(t *testing.T) {
	t.Parallel()
	const (
		groupID   = "g-classic-sync-wait"
		session   = 1500 // ms, B's
		leaderTTL = 6000 // ms, A's session: A is not expired first
		rebalance = 2000 // ms, also the pending-sync timeout
	)
	c, err := NewCluster(NumBrokers(1), BrokerConfigs(map[string]string{"group.min.session.timeout.ms": "1000"}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	// One client per member: a connection's requests are answered in order.
	newClient := func() *kgo.Client {
		cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.RequestRetries(0))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		return cl
	}
	join := func(cl *kgo.Client, memberID string, session int32) (*kmsg.JoinGroupResponse, error) {
		req := kmsg.NewPtrJoinGroupRequest()
		req.Group = groupID
		req.MemberID = memberID
		req.SessionTimeoutMillis = session
		req.RebalanceTimeoutMillis = rebalance
		req.ProtocolType = "consumer"
		proto := kmsg.NewJoinGroupRequestProtocol()
		proto.Name = "range"
		proto.Metadata = []byte{0, 0, 0, 0, 0, 0, 0, 0}
		req.Protocols = append(req.Protocols, proto)
		resp, err := req.RequestWith(ctx, cl)
		if err == nil && resp.ErrorCode == kerr.MemberIDRequired.Code {
			req.MemberID = resp.MemberID
			resp, err = req.RequestWith(ctx, cl)
		}
		return resp, err
	}
	sync := func(ctx context.Context, cl *kgo.Client, gen int32, memberID string, members []kmsg.JoinGroupResponseMember) (*kmsg.SyncGroupResponse, error) {
		req := kmsg.NewPtrSyncGroupRequest()
		req.Group = groupID
		req.Generation = gen
		req.MemberID = memberID
		for _, m := range members {
			a := kmsg.NewSyncGroupRequestGroupAssignment()
			a.MemberID = m.MemberID
			a.MemberAssignment = []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
			req.GroupAssignment = append(req.GroupAssignment, a)
		}
		return req.RequestWith(ctx, cl)
	}

	// A joins alone and leads a stable group.
	a := newClient()
	resp, err := join(a, "", leaderTTL)
	if err != nil || resp.ErrorCode != 0 {
		t.Fatalf("A join: %v %+v", err, resp)
	}
	aID := resp.MemberID
	if sr, err := sync(ctx, a, resp.Generation, aID, resp.Members); err != nil || sr.ErrorCode != 0 {
		t.Fatalf("A sync: %v %+v", err, sr)
	}

	// B joins and waits in the barrier; A rejoins, so the rebalance completes
	// with A still the leader. A then never syncs (it died).
	b := newClient()
	bJoined := make(chan *kmsg.JoinGroupResponse, 1)
	go func() {
		r, err := join(b, "", session)
		if err != nil || r.ErrorCode != 0 {
			t.Errorf("B join: %v %+v", err, r)
			r = nil
		}
		bJoined <- r
	}()
	if _, err := c.WaitGroupInfo(ctx, groupID, func(g *GroupInfo) bool { return len(g.Members) == 2 }); err != nil {
		t.Fatalf("B never joined: %v", err)
	}
	if resp, err = join(a, aID, leaderTTL); err != nil || resp.ErrorCode != 0 || resp.LeaderID != aID {
		t.Fatalf("A rejoin: %v %+v", err, resp)
	}
	bresp := <-bJoined
	if bresp == nil {
		t.FailNow()
	}
	bID := bresp.MemberID

	// B's SyncGroup waits for the leader's; B's session timeout passes first.
	// Within the pending-sync timeout (plus slack) it must be answered: the
	// rebalance that drops A tells B to rejoin. (Sent from a client that
	// never joined, which waits 10 s for the answer instead of the rebalance
	// timeout.)
	start := time.Now()
	sctx, scancel := context.WithTimeout(ctx, 3*rebalance*time.Millisecond)
	defer scancel()
	sr, err := sync(sctx, newClient(), bresp.Generation, bID, nil)
	if err != nil {
		t.Fatalf("B's SyncGroup was not answered within %s (the member was expired while waiting in it): %v", time.Since(start).Round(time.Millisecond), err)
	}
	if sr.ErrorCode != kerr.RebalanceInProgress.Code {
		t.Fatalf("B's SyncGroup answered %v, want REBALANCE_IN_PROGRESS", kerr.ErrorForCode(sr.ErrorCode))
	}
	// B rejoins under its own id and leads the group alone.
	if resp, err = join(b, bID, session); err != nil || resp.ErrorCode != 0 {
		t.Fatalf("B rejoin: %v %+v", err, resp)
	}
	if resp.LeaderID != bID || len(resp.Members) != 1 {
		t.Fatalf("B rejoined into a group led by %s with %d members, want itself alone", resp.LeaderID, len(resp.Members))
	}
}
