package admin

import (
	"fmt"
	"net/http"
	"net/http/pprof"
	runtimepprof "runtime/pprof"
)

// profile serves Go's profiles of this process (net/http/pprof), behind the
// admin token like every other route: a CPU profile shows what the process
// spends its time on, and a goroutine dump what its stages wait for. The
// profile names are net/http/pprof's: profile (CPU, ?seconds=N, 30 by
// default), trace (?seconds=N), cmdline, symbol and the runtime's named
// profiles (heap, allocs, goroutine, block, mutex, threadcreate); ?debug=1
// answers text instead of the protobuf `go tool pprof` reads.
//
// It is mounted on the admin mux by hand rather than through net/http/pprof's
// registration on http.DefaultServeMux, which fedpipe never serves.
func (s *Server) profile(w http.ResponseWriter, r *http.Request) error {
	switch name := r.PathValue("profile"); name {
	case "profile":
		pprof.Profile(w, r)
	case "trace":
		pprof.Trace(w, r)
	case "cmdline":
		pprof.Cmdline(w, r)
	case "symbol":
		pprof.Symbol(w, r)
	default:
		if runtimepprof.Lookup(name) == nil {
			return notFound(fmt.Sprintf("no profile %q: profile, trace, cmdline, symbol, heap, allocs, goroutine, block, mutex or threadcreate", name))
		}
		pprof.Handler(name).ServeHTTP(w, r)
	}
	return nil
}
