package presence_test

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/consumers/presence"
	"github.com/fedpipe/fedpipe/schema"
)

// sendRaw writes usersync records as another producer might, unchecked.
func (e *env) sendRaw(t *testing.T, recs ...schema.UserSyncRecord) {
	t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(e.addr), Topic: syncTopic, Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	var msgs []kafka.Message
	for _, r := range recs {
		r.V = schema.SchemaVersion
		v, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, kafka.Message{Key: []byte(r.Instance), Value: v})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
}

// TestNULBytesAreDeadLetteredNotRetried: PostgreSQL's text refuses NUL
// (SQLSTATE 22021), and the stage took that for a transient failure: one
// record with a NUL in its status message, user id or instance froze its
// usersync partition for good. They are dead-lettered and the records behind
// them applied.
func TestNULBytesAreDeadLetteredNotRetried(t *testing.T) {
	e := newEnv(t, presence.Config{})
	msg := "at\x00lunch"
	on := true
	e.sendRaw(t,
		schema.UserSyncRecord{Kind: schema.KindSetPresence, Instance: "w1", UserID: "@a:hs.test", Presence: "online", StatusMsg: &msg},
		schema.UserSyncRecord{Kind: schema.KindUserSync, Instance: "w1", UserID: "@n\x00ul:hs.test", Syncing: &on},
		schema.UserSyncRecord{Kind: schema.KindUserSync, Instance: "w\x00", UserID: "@c:hs.test", Syncing: &on},
		syncing("w1", "@b:hs.test", true))
	e.waitStates(t, map[string]string{"@b:hs.test": "online"})

	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{e.addr}, Topic: deadTopic, Partition: 0, MaxWait: 500 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for range 3 {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("dead letters missing: %v", err)
		}
		var reason string
		for _, h := range m.Headers {
			if h.Key == "deadletter_reason" {
				reason = string(h.Value)
			}
		}
		if reason == "" {
			t.Errorf("dead letter without a reason: %q", m.Value)
		}
	}
	if got := e.stream(t); len(got) != 1 {
		t.Errorf("presence stream holds %v, want only @b:hs.test", got)
	}
}
