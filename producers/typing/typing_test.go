package typing_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/internal/kafkaio"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/producers/typing"
	"github.com/fedpipe/fedpipe/schema"
)

// Set writes one record keyed by the room once the broker acknowledged it;
// a user of another server is a ValidationError and writes nothing.
func TestSetPublishesKeyedByRoom(t *testing.T) {
	cluster, addr := testenv.Broker(t)
	if err := cluster.CreateTopic("fedpipe.typing", 1, nil); err != nil {
		t.Fatal(err)
	}
	w := kafkaio.NewWriter([]string{addr}, "fedpipe.typing")
	defer w.Close()
	p := typing.New(w, "hs.test")
	var ve *outbox.ValidationError
	if err := p.Set(context.Background(), "!r:hs.test", "@eve:evil.test", true, 0); !errors.As(err, &ve) || ve.Field != "user_id" {
		t.Fatalf("remote user: %v", err)
	}
	if err := p.Set(context.Background(), "!r:hs.test", "@a:hs.test", true, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: "fedpipe.typing", Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := r.ReadMessage(ctx) // a partition reader: nothing to commit
	if err != nil {
		t.Fatal(err)
	}
	rec, err := schema.DecodeTypingRecord(m.Value)
	if err != nil || string(m.Key) != "!r:hs.test" || rec.UserID != "@a:hs.test" || !rec.Typing || rec.TimeoutMS != 5000 {
		t.Fatalf("record %s keyed %s: %v", m.Value, m.Key, err)
	}
	if m.Offset != 0 {
		t.Fatalf("the refused notification was written too (first record at offset %d)", m.Offset)
	}
}
