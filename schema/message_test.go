package schema_test

import (
	"reflect"
	"testing"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/schema"
)

func header(k, v string) kafka.Header { return kafka.Header{Key: k, Value: []byte(v)} }

// TestHeadersMessage: the three header sets records carry, written the way
// the stages wrote them by hand before the builder (same keys, values, order).
func TestHeadersMessage(t *testing.T) {
	value := []byte(`{"v":1}`)
	for _, tc := range []struct {
		name string
		h    schema.Headers
		want []kafka.Header
	}{
		{"kind and schema (typing library)", schema.NewHeaders(schema.KindTyping),
			[]kafka.Header{header("kind", "typing"), header("schema", "1")}},
		{"with instance (receipts, typing EDUs, usersync)", schema.NewHeaders(schema.KindReceipt).WithInstance("w1"),
			[]kafka.Header{header("kind", "receipt"), header("schema", "1"), header("instance", "w1")}},
		{"with position and instance (relay, pdu, presence, device lists)", schema.NewHeaders(schema.KindPDU).WithPosition(42).WithInstance("r1"),
			[]kafka.Header{header("kind", "pdu"), header("schema", "1"), header("position", "42"), header("instance", "r1")}},
		{"instance added first still goes last", schema.NewHeaders(schema.KindPresence).WithInstance("r1").WithPosition(-7),
			[]kafka.Header{header("kind", "presence"), header("schema", "1"), header("position", "-7"), header("instance", "r1")}},
		{"empty instance is still sent", schema.NewHeaders(schema.KindEDU).WithInstance(""),
			[]kafka.Header{header("kind", "edu"), header("schema", "1"), header("instance", "")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.h.Message([]byte("dest.test"), value)
			want := kafka.Message{Key: []byte("dest.test"), Value: value, Headers: tc.want}
			if !reflect.DeepEqual(m, want) {
				t.Fatalf("message %+v, want %+v", m, want)
			}
		})
	}
}

// TestHeadersAreNeverShared: deriving two header sets from one, or appending
// to one record's headers (as a dead-letter writer does), changes no other.
func TestHeadersAreNeverShared(t *testing.T) {
	base := schema.NewHeaders(schema.KindPDU)
	a, b := base.WithPosition(1), base.WithPosition(2)
	ma, mb := a.Message(nil, nil), b.Message(nil, nil)
	if string(ma.Headers[2].Value) != "1" || string(mb.Headers[2].Value) != "2" || len(base.Message(nil, nil).Headers) != 2 {
		t.Fatalf("derived headers interfere: %v %v", ma.Headers, mb.Headers)
	}
	m1, m2 := a.Message([]byte("x"), nil), a.Message([]byte("y"), nil)
	m1.Headers = append(m1.Headers, header("deadletter_reason", "r"))
	if len(m2.Headers) != 3 || len(a.Message(nil, nil).Headers) != 3 {
		t.Fatalf("appending to one record's headers changed another's: %v", m2.Headers)
	}
}
