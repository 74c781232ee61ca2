// Package httpmux is net/http's ServeMux that can say which routes it
// serves, so that a test holds what a listener serves and what
// docs/openapi.yaml documents together, from the registrations themselves.
package httpmux

import (
	"net/http"
	"slices"
	"strings"
	"sync"
)

// Mux is an http.ServeMux that remembers its routes: the patterns
// registered with a method ("GET /x"). A pattern without one (a path's 405
// answer, a catch-all) is not a route, but a *Mux (or anything with Routes)
// mounted under it lends its routes.
type Mux struct {
	mux    http.ServeMux
	mu     sync.Mutex
	routes []string
	mounts []interface{ Routes() []string }
}

// New returns an empty Mux.
func New() *Mux { return &Mux{} }

// Handle registers h for pattern, as http.ServeMux.Handle does.
func (m *Mux) Handle(pattern string, h http.Handler) {
	m.mux.Handle(pattern, h)
	m.mu.Lock()
	defer m.mu.Unlock()
	if method, _, ok := strings.Cut(pattern, " "); ok && method != "" && !strings.HasPrefix(method, "/") {
		m.routes = append(m.routes, pattern)
		return
	}
	if r, ok := h.(interface{ Routes() []string }); ok {
		m.mounts = append(m.mounts, r)
	}
}

// HandleFunc registers f for pattern.
func (m *Mux) HandleFunc(pattern string, f func(http.ResponseWriter, *http.Request)) {
	m.Handle(pattern, http.HandlerFunc(f))
}

// ServeHTTP dispatches r.
func (m *Mux) ServeHTTP(w http.ResponseWriter, r *http.Request) { m.mux.ServeHTTP(w, r) }

// Routes returns every route m serves, its own and its mounts', as
// "METHOD path" with ServeMux's {$} (exact match) left out, sorted.
func (m *Mux) Routes() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, p := range m.routes {
		out = append(out, strings.ReplaceAll(p, "{$}", ""))
	}
	for _, r := range m.mounts {
		out = append(out, r.Routes()...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
