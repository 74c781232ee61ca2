package runtime

import (
	"context"
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/segmentio/kafka-go"
)

// IsPoison reports whether err marks a record that can never be handled:
// it wraps ErrPoison, or PostgreSQL refused the record's data for what it is,
// not for the state of the server: SQLSTATE class 22 (data exception: a NUL
// or invalid UTF-8 in text, a value out of range, a string too long) or class
// 23 (integrity constraint violation). Retrying such a record would fail the
// same way for ever and hold back its partition.
func IsPoison(err error) bool {
	if errors.Is(err, ErrPoison) {
		return true
	}
	var pg *pgconn.PgError
	return errors.As(err, &pg) && (strings.HasPrefix(pg.Code, "22") || strings.HasPrefix(pg.Code, "23"))
}

// deadLetterFunc dead-letters a record of the partition being handled,
// counted like one whose Handle returned ErrPoison.
type deadLetterFunc func(ctx context.Context, m kafka.Message, reason error) error

type deadLetterKey struct{}

// deadLetterFrom is the dead-letter function of the partition whose Handle
// got ctx (nil outside one).
func deadLetterFrom(ctx context.Context) deadLetterFunc {
	f, _ := ctx.Value(deadLetterKey{}).(deadLetterFunc)
	return f
}
