package kfake

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// A classic member whose JoinGroup answer cannot be delivered (its connection
// died while it waited in the barrier) must still expire after its session
// timeout, as in Kafka, where completing a join always schedules the member's
// next heartbeat expiration. Before the fix the reply failure skipped arming the
// session timer, the leader's SyncGroup then cleared the pending-sync timer, and
// the dead member stayed in the group, holding its assignment, forever.
func TestClassicMemberWithUndeliverableJoinExpires(t *testing.T) {
	t.Parallel()
	const (
		groupID = "g-classic-dead-join"
		session = 1500 // ms
	)
	c, err := NewCluster(NumBrokers(1), BrokerConfigs(map[string]string{"group.min.session.timeout.ms": "1000"}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)

	newClient := func(d *deadDialer) *kgo.Client {
		opts := []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}
		if d != nil {
			opts = append(opts, kgo.Dialer(d.DialContext), kgo.RequestRetries(0))
		}
		cl, err := kgo.NewClient(opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		return cl
	}
	join := func(cl *kgo.Client, memberID string) (*kmsg.JoinGroupResponse, error) {
		req := kmsg.NewPtrJoinGroupRequest()
		req.Group = groupID
		req.MemberID = memberID
		req.SessionTimeoutMillis = session
		req.RebalanceTimeoutMillis = session
		req.ProtocolType = "consumer"
		proto := kmsg.NewJoinGroupRequestProtocol()
		proto.Name = "range"
		proto.Metadata = []byte{0, 0, 0, 0, 0, 0, 0, 0}
		req.Protocols = append(req.Protocols, proto)
		return req.RequestWith(ctx, cl)
	}
	sync := func(cl *kgo.Client, gen int32, memberID string, members []kmsg.JoinGroupResponseMember) {
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
		resp, err := req.RequestWith(ctx, cl)
		if err != nil || resp.ErrorCode != 0 {
			t.Fatalf("sync: %v %v", err, kerr.ErrorForCode(resp.ErrorCode))
		}
	}

	// A joins alone and becomes stable.
	a := newClient(nil)
	resp, err := join(a, "")
	if err == nil && resp.ErrorCode == kerr.MemberIDRequired.Code {
		resp, err = join(a, resp.MemberID)
	}
	if err != nil || resp.ErrorCode != 0 {
		t.Fatalf("A join: %v %v", err, kerr.ErrorForCode(resp.ErrorCode))
	}
	aID := resp.MemberID
	sync(a, resp.Generation, aID, resp.Members)

	// B gets a member id, joins, and waits in the barrier for A; its
	// connection then dies, so the JoinGroup answer cannot be delivered.
	dialer := &deadDialer{}
	b := newClient(dialer)
	bresp, err := join(b, "")
	if err != nil || bresp.ErrorCode != kerr.MemberIDRequired.Code {
		t.Fatalf("B first join: %v %v", err, bresp)
	}
	bID := bresp.MemberID
	bDone := make(chan struct{})
	go func() {
		defer close(bDone)
		_, _ = join(b, bID) // fails when its connection is closed
	}()
	if _, err := c.WaitGroupInfo(ctx, groupID, func(g *GroupInfo) bool { return len(g.Members) == 2 }); err != nil {
		t.Fatalf("B never joined: %v", err)
	}
	dialer.closeAll()
	<-bDone

	// A rejoins; the rebalance completes with both members, B's answer is
	// lost, and A (the leader) assigns to both.
	resp, err = join(a, aID)
	if err != nil || resp.ErrorCode != 0 {
		t.Fatalf("A rejoin: %v %v", err, kerr.ErrorForCode(resp.ErrorCode))
	}
	if len(resp.Members) != 2 {
		t.Fatalf("A's rejoin saw %d members, want 2 (A and the dead B)", len(resp.Members))
	}
	sync(a, resp.Generation, aID, resp.Members)

	// A keeps heartbeating. B never does: within a few session timeouts it
	// must be gone and A asked to rejoin.
	deadline := time.Now().Add(4 * session * time.Millisecond)
	for {
		hb := kmsg.NewPtrHeartbeatRequest()
		hb.Group = groupID
		hb.Generation = resp.Generation
		hb.MemberID = aID
		hr, err := hb.RequestWith(ctx, a)
		if err != nil {
			t.Fatalf("heartbeat: %v", err)
		}
		if hr.ErrorCode == kerr.RebalanceInProgress.Code {
			break
		}
		if time.Now().After(deadline) {
			info := c.GroupInfo(groupID)
			t.Fatalf("the dead member %s was never expired: the group still has %d members in state %s", bID, len(info.Members), info.State)
		}
		time.Sleep(200 * time.Millisecond) // heartbeat interval
	}
	resp, err = join(a, aID)
	if err != nil || resp.ErrorCode != 0 {
		t.Fatalf("A rejoin after expiry: %v %v", err, kerr.ErrorForCode(resp.ErrorCode))
	}
	if len(resp.Members) != 1 {
		t.Fatalf("after B expired the group has %d members, want 1", len(resp.Members))
	}
}

// deadDialer remembers the connections it makes so a test can cut them.
type deadDialer struct {
	mu    sync.Mutex
	conns []net.Conn
	dead  bool
}

func (d *deadDialer) DialContext(ctx context.Context, network, host string) (net.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dead {
		return nil, net.ErrClosed
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, network, host)
	if err == nil {
		d.conns = append(d.conns, conn)
	}
	return conn, err
}

func (d *deadDialer) closeAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dead = true
	for _, c := range d.conns {
		c.Close()
	}
}

// A rebalance's join phase ends at the deadline set when it began, as in Kafka:
// members joining meanwhile do not push it back. Before the fix every join reset
// the deadline, so members restarting every few seconds held the group in
// PreparingRebalance, with no partitions assigned to anyone, for as long as they
// kept coming.
func TestClassicJoinsDoNotPushTheRebalanceDeadline(t *testing.T) {
	t.Parallel()
	const (
		groupID   = "g-classic-join-burst"
		rebalance = 2 * time.Second
	)
	c, err := NewCluster(NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	// One client per member: a connection's requests are answered in order,
	// so members sharing one could not join while another waits.
	newClient := func() *kgo.Client {
		cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		return cl
	}
	joinCtx := func(ctx context.Context, cl *kgo.Client, memberID string) (*kmsg.JoinGroupResponse, error) {
		req := kmsg.NewPtrJoinGroupRequest()
		req.Group = groupID
		req.MemberID = memberID
		req.SessionTimeoutMillis = 30000
		req.RebalanceTimeoutMillis = int32(rebalance.Milliseconds())
		req.ProtocolType = "consumer"
		proto := kmsg.NewJoinGroupRequestProtocol()
		proto.Name = "range"
		proto.Metadata = []byte{0, 0, 0, 0, 0, 0, 0, 0}
		req.Protocols = append(req.Protocols, proto)
		return req.RequestWith(ctx, cl)
	}
	join := func(cl *kgo.Client, memberID string) (*kmsg.JoinGroupResponse, error) {
		return joinCtx(ctx, cl, memberID)
	}
	newMember := func(cl *kgo.Client) string {
		resp, err := join(cl, "")
		if err != nil || resp.ErrorCode != kerr.MemberIDRequired.Code {
			t.Fatalf("first join: %v %v", err, resp)
		}
		return resp.MemberID
	}

	// A joins and becomes stable, then goes silent (it never rejoins).
	a := newClient()
	aID := newMember(a)
	resp, err := join(a, aID)
	if err != nil || resp.ErrorCode != 0 {
		t.Fatalf("A join: %v %v", err, kerr.ErrorForCode(resp.ErrorCode))
	}
	syncReq := kmsg.NewPtrSyncGroupRequest()
	syncReq.Group, syncReq.Generation, syncReq.MemberID = groupID, resp.Generation, aID
	if sr, err := syncReq.RequestWith(ctx, a); err != nil || sr.ErrorCode != 0 {
		t.Fatalf("A sync: %v %v", err, sr)
	}

	// B joins, starting a rebalance that waits for A; more members keep
	// joining every 0.4 of the rebalance timeout for twice its length.
	start := time.Now()
	type answer struct {
		after time.Duration
		err   error
	}
	bAnswered := make(chan answer, 1)
	b := newClient()
	bID := newMember(b)
	go func() {
		_, err := join(b, bID)
		bAnswered <- answer{time.Since(start), err}
	}()
	var wg sync.WaitGroup
	joiners, stopJoiners := context.WithCancel(ctx)
	defer func() { stopJoiners(); wg.Wait() }()
	for i := 1; i <= 5; i++ {
		time.Sleep(rebalance * 4 / 10) // the cadence of the joining members
		cl := newClient()
		id := newMember(cl)
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = joinCtx(joiners, cl, id) }()
	}
	select {
	case a := <-bAnswered:
		if a.err != nil {
			t.Fatalf("B's join: %v", a.err)
		}
		if a.after > rebalance*3/2 {
			t.Fatalf("B's join was answered after %v: later joins pushed the %v deadline back", a.after, rebalance)
		}
	case <-ctx.Done():
		t.Fatal("B's join was never answered")
	}
}
