package httpmux_test

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/fedpipe/fedpipe/internal/httpmux"
)

// Routes lists the method-qualified patterns, a mounted Mux's included, and
// leaves out 405 fallbacks and catch-alls; requests are dispatched as
// ServeMux does.
func TestRoutesAreTheRegisteredOnes(t *testing.T) {
	inner := httpmux.New()
	inner.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("page")) })
	inner.HandleFunc("POST /a/{id}", func(w http.ResponseWriter, _ *http.Request) {})
	inner.HandleFunc("/a/{id}", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusMethodNotAllowed) })
	outer := httpmux.New()
	outer.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {})
	outer.Handle("/", inner)
	if got, want := outer.Routes(), []string{"GET /", "GET /metrics", "POST /a/{id}"}; !slices.Equal(got, want) {
		t.Fatalf("routes %v, want %v", got, want)
	}
	for _, c := range []struct {
		method, path string
		code         int
	}{{"GET", "/", 200}, {"GET", "/a/1", 405}, {"POST", "/a/1", 200}, {"GET", "/nothing", 404}} {
		rec := httptest.NewRecorder()
		outer.ServeHTTP(rec, httptest.NewRequest(c.method, c.path, nil))
		if rec.Code != c.code {
			t.Errorf("%s %s answered %d, want %d", c.method, c.path, rec.Code, c.code)
		}
	}
}
