package testenv

import (
	"context"
	"errors"
	"net/http"
	"testing"
)

// Background runs run(ctx) beside the test and supervises it: when the test
// ends (or stop is called) ctx is cancelled and the run waited for, and an
// error other than its cancellation (or a closed HTTP server) fails the test.
// Tests start their stages and servers with it rather than with a bare go
// statement whose error nobody sees.
func Background(t testing.TB, name string, run func(ctx context.Context) error) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var stopped bool
	var err error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			err = <-done
			if errors.Is(err, context.Canceled) || errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
		}
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	})
	return stop
}
