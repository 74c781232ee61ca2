package runtime

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrPoison marks a record that can never be handled: it is dead-lettered.
var ErrPoison = errors.New("poison record")

// Poison wraps err as ErrPoison.
func Poison(err error) error { return fmt.Errorf("%w: %w", ErrPoison, err) }

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
