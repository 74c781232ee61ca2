package runtime_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/consumers/runtime"
)

// poisonAtRebalance finds record 3 poison only once its generation has ended
// (the first time), so its dead letter is written on an ended generation.
type poisonAtRebalance struct {
	waited  atomic.Bool
	waiting chan struct{}
}

type poisonAtRebalanceHandler struct{ s *poisonAtRebalance }

func (s *poisonAtRebalance) Open(context.Context, string, int) (runtime.PartitionHandler, error) {
	return poisonAtRebalanceHandler{s}, nil
}

func (h poisonAtRebalanceHandler) Handle(ctx context.Context, m kafka.Message, done func()) error {
	if m.Offset == 3 {
		if h.s.waited.CompareAndSwap(false, true) {
			close(h.s.waiting)
			<-ctx.Done() // the generation ends under it
		}
		return runtime.Poison(errors.New("cannot decode"))
	}
	done()
	return nil
}

func (poisonAtRebalanceHandler) Close(context.Context) error { return nil }

// A dead letter whose write is cut by the end of its generation is not a
// failure of the member: the partition stops, and whoever owns it next
// dead-letters the record again.
func TestDeadLetterCutByARebalanceIsNotFatal(t *testing.T) {
	k := setup(t, 1)
	addr := k.Addr
	produce(t, addr, k.Topic("in"), 10)
	stage := &poisonAtRebalance{waiting: make(chan struct{})}
	stopA := member(t, k, stage, k.Topic("dead"))
	select {
	case <-stage.waiting:
	case <-time.After(20 * time.Second):
		t.Fatal("record 3 never reached the handler")
	}
	stopB := member(t, k, stage, k.Topic("dead")) // a rebalance ends A's generation

	rd := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: k.Topic("dead"), Partition: 0, MaxWait: 500 * time.Millisecond})
	defer rd.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := rd.ReadMessage(ctx)
	if err != nil {
		t.Fatalf("record 3 was never dead-lettered after the rebalance: %v", err)
	}
	for _, h := range m.Headers {
		if h.Key == "source_offset" && string(h.Value) != "3" {
			t.Fatalf("dead letter of offset %s, want 3", h.Value)
		}
	}
	if err := stopA(); err != nil {
		t.Fatalf("member A stopped with %v: an ended generation is not a failure", err)
	}
	if err := stopB(); err != nil {
		t.Fatalf("member B: %v", err)
	}
}
