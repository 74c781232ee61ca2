package testenv

import "testing"

func TestDatabaseURLKeepsCredentialsAndOptions(t *testing.T) {
	for admin, want := range map[string]string{
		"postgres://postgres@127.0.0.1:5434/postgres?sslmode=disable":      "postgres://postgres@127.0.0.1:5434/t1?sslmode=disable",
		"postgres://fp:s3cr%40t@db.example:5432/admin?sslmode=require&x=y": "postgres://fp:s3cr%40t@db.example:5432/t1?sslmode=require&x=y",
		"postgresql://u:p@[::1]:6543/?application_name=tests":              "postgresql://u:p@[::1]:6543/t1?application_name=tests",
	} {
		got, err := databaseURL(admin, "t1")
		if err != nil || got != want {
			t.Errorf("databaseURL(%q) = %q, %v; want %q", admin, got, err, want)
		}
	}
	for _, bad := range []string{"mysql://u@h/db", "::", "host=127.0.0.1 user=postgres"} {
		if got, err := databaseURL(bad, "t1"); err == nil {
			t.Errorf("databaseURL(%q) = %q, want an error", bad, got)
		}
	}
}
