package admin

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"time"
)

//go:embed page.html
var pageHTML string

var pageTemplate = template.Must(template.New("status").Funcs(template.FuncMap{
	"dur":   func(d time.Duration) string { return human(d) },
	"durms": func(ms int64) string { return human(time.Duration(ms) * time.Millisecond) },
	"since": func(t, now time.Time) string { return human(now.Sub(t)) },
	"ago":   func(ms int64, now time.Time) string { return human(now.Sub(time.UnixMilli(ms))) + " ago" },
	"until": func(ms int64, now time.Time) string {
		if d := time.UnixMilli(ms).Sub(now); d > 0 {
			return "in " + human(d)
		}
		return "due"
	},
	"deref": func(p *int64) int64 { return *p },
}).Parse(pageHTML))

// human rounds a duration for a person: 3d4h, 2h5m, 4m10s, 12s.
func human(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d >= 24*time.Hour:
		return fmt.Sprintf("%dd%dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	case d >= time.Hour:
		return fmt.Sprintf("%dh%dm", d/time.Hour, d%time.Hour/time.Minute)
	case d >= time.Minute:
		return fmt.Sprintf("%dm%ds", d/time.Minute, d%time.Minute/time.Second)
	default:
		return fmt.Sprintf("%ds", d/time.Second)
	}
}

// GET /: the status page, rendered on the server, refreshing itself.
func (s *Server) page(w http.ResponseWriter, r *http.Request) error {
	st := s.Status(r.Context())
	data := struct {
		S            Status
		Refresh      int
		MoreTroubled bool
	}{st, 5, st.TroubledTotal > int64(len(st.Troubled))}
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, data); err != nil {
		return fmt.Errorf("rendering the status page: %w", err)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(buf.Bytes())
	return nil
}
