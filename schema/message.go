package schema

import (
	"strconv"

	"github.com/segmentio/kafka-go"
)

// Headers are the headers of a record, always in the order kind, schema,
// position, instance: kind and schema on every record, position and instance
// on the records that carry them (WithPosition, WithInstance, each at most
// once, in either order). Every producer builds its records with Message, so
// all write the same headers the same way.
//
// A Headers value is never changed: the With methods return a new one. The
// records built from one value share its header slice (kafka-go only reads
// headers; the slice is full, so an append copies it).
type Headers struct{ list []kafka.Header }

// NewHeaders returns the headers of a record of kind: kind and schema.
func NewHeaders(kind string) Headers {
	return Headers{[]kafka.Header{
		{Key: HeaderKind, Value: []byte(kind)},
		{Key: HeaderSchema, Value: []byte(strconv.Itoa(SchemaVersion))},
	}}
}

// WithPosition adds the stream position the record was published from.
func (h Headers) WithPosition(position int64) Headers {
	return h.insert(2, kafka.Header{Key: HeaderPosition, Value: []byte(strconv.FormatInt(position, 10))})
}

// WithInstance adds the name of the process that produced the record.
func (h Headers) WithInstance(instance string) Headers {
	return h.insert(len(h.list), kafka.Header{Key: HeaderInstance, Value: []byte(instance)})
}

// insert returns h with hd at index at.
func (h Headers) insert(at int, hd kafka.Header) Headers {
	list := make([]kafka.Header, 0, len(h.list)+1)
	list = append(list, h.list[:at]...)
	list = append(list, hd)
	return Headers{append(list, h.list[at:]...)}
}

// Message is the record with key, value (a Marshal method's output) and h.
func (h Headers) Message(key, value []byte) kafka.Message {
	return kafka.Message{Key: key, Value: value, Headers: h.list}
}
