// Package typing is the Go API for typing notifications: a homeserver calls
// Set when a local user starts or stops typing, and fedpipe tells the servers
// in the room, re-sends it every 40 s while the user types, and sends
// typing: false when the user stops or the timeout passes. Typing is
// ephemeral: it is written to <prefix>.typing (keyed by room_id) directly,
// not through PostgreSQL.
package typing

import (
	"context"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/fedpipe/fedpipe/federation/mxid"
	"github.com/fedpipe/fedpipe/producers/outbox"
	"github.com/fedpipe/fedpipe/schema"
)

// Writer writes records synchronously: a *kafka.Writer bound to
// <prefix>.typing (kafkaio.NewWriter).
type Writer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// Publisher publishes typing notifications of one server's users.
type Publisher struct {
	w          Writer
	serverName string
	now        func() time.Time
}

// New returns a Publisher writing through w for the users of serverName.
func New(w Writer, serverName string) *Publisher {
	return &Publisher{w: w, serverName: serverName, now: time.Now}
}

// Record checks a typing notification and builds its record: a timeout of 0
// is schema.DefaultTypingTimeoutMS, a longer one than
// schema.MaxTypingTimeoutMS is cut to it. Bad input is an
// *outbox.ValidationError naming the field.
func Record(serverName, room, user string, typing bool, timeout time.Duration, now time.Time) (schema.TypingRecord, error) {
	bad := func(field, reason string) error { return &outbox.ValidationError{Field: field, Reason: reason} }
	if room == "" || room[0] != '!' {
		return schema.TypingRecord{}, bad("room_id", "must start with !")
	}
	if err := schema.CheckIdentifier("room_id", room); err != nil {
		return schema.TypingRecord{}, bad("room_id", err.Error())
	}
	if err := mxid.CheckUserID(user); err != nil {
		return schema.TypingRecord{}, bad("user_id", err.Error())
	}
	if serverName != "" && mxid.ServerPart(user) != serverName {
		return schema.TypingRecord{}, bad("user_id", user+" is not a user of "+serverName)
	}
	if timeout < 0 {
		return schema.TypingRecord{}, bad("timeout", "must not be negative")
	}
	ms := min(timeout.Milliseconds(), schema.MaxTypingTimeoutMS)
	if ms == 0 {
		ms = schema.DefaultTypingTimeoutMS
	}
	rec := schema.TypingRecord{V: schema.SchemaVersion, Kind: schema.KindTyping, RoomID: room, UserID: user, Typing: typing, TS: now.UnixMilli()}
	if typing {
		rec.TimeoutMS = ms
	}
	return rec, nil
}

// Set publishes that user is typing in room for timeout (or stopped, when
// typing is false), once the broker has acknowledged it.
func (p *Publisher) Set(ctx context.Context, room, user string, typing bool, timeout time.Duration) error {
	rec, err := Record(p.serverName, room, user, typing, timeout, p.now())
	if err != nil {
		return err
	}
	v, err := rec.Marshal()
	if err != nil {
		return err
	}
	if err := p.w.WriteMessages(ctx, Message(rec, v)); err != nil {
		return fmt.Errorf("publishing typing of %s in %s: %w", user, room, err)
	}
	return nil
}

// Message is the Kafka message of a typing record: keyed by room, with the
// kind and schema headers.
func Message(rec schema.TypingRecord, value []byte) kafka.Message {
	return schema.NewHeaders(schema.KindTyping).Message([]byte(rec.RoomID), value)
}
