// Package testenv starts the real parts tests talk to: an in-process Kafka-protocol
// broker (kfake) listening on loopback TCP, and a fresh PostgreSQL database on the
// server named by FEDPIPE_TEST_DATABASE_URL (default: the private test cluster scripts/ensure-postgres runs on 127.0.0.1:5434).
//
// It is imported only by tests, but lives in its own package so every stage's tests
// set up their environment the same way.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kfake"
)

// DefaultAdminURL is the PostgreSQL server tests create their databases on when
// FEDPIPE_TEST_DATABASE_URL is unset: the private cluster scripts/ensure-postgres starts.
const DefaultAdminURL = "postgres://postgres@127.0.0.1:5434/postgres?sslmode=disable"

// Broker starts an in-process Kafka-protocol broker on a loopback port and returns
// it with its bootstrap address. The broker is closed when the test ends.
// Topics must be created by the caller (auto-creation is off, as in production).
func Broker(t testing.TB, opts ...kfake.Opt) (*kfake.Cluster, string) {
	t.Helper()
	base := []kfake.Opt{kfake.NumBrokers(1), kfake.ListenFn(loopbackListen)}
	c, err := kfake.NewCluster(append(base, opts...)...)
	if err != nil {
		t.Fatalf("starting kfake broker: %v", err)
	}
	t.Cleanup(c.Close)
	return c, c.ListenAddrs()[0]
}

// AdminURL is the URL of the PostgreSQL database tests connect to in order to
// create their own databases.
func AdminURL() string {
	if u := os.Getenv("FEDPIPE_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultAdminURL
}

// Database creates a new, empty database for the test and returns its URL. The
// database is dropped when the test ends. A test fails (it does not skip) when no
// server is reachable: .ci/run starts one.
func Database(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		t.Fatalf("connecting to the test PostgreSQL server %s: %v", AdminURL(), err)
	}
	defer admin.Close(ctx)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "fedpipe_test_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("creating test database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, AdminURL())
		if err != nil {
			t.Logf("dropping test database %s: %v", name, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("dropping test database %s: %v", name, err)
		}
	})
	u, err := databaseURL(AdminURL(), name)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// databaseURL is admin with its database replaced by name: the same server,
// user, password and options.
func databaseURL(admin, name string) (string, error) {
	u, err := url.Parse(admin)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", fmt.Errorf("FEDPIPE_TEST_DATABASE_URL %q: want a postgres:// URL (%v)", admin, err)
	}
	u.Path = "/" + name
	return u.String(), nil
}

// Pool connects a pgx pool to url, closed when the test ends.
func Pool(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatalf("connecting to %s: %v", url, err)
	}
	t.Cleanup(p.Close)
	return p
}

// Eventually polls cond every few milliseconds until it returns true or the
// deadline passes, then fails the test with msg. Tests wait on asynchronous
// outcomes with it instead of sleeping.
func Eventually(t testing.TB, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
