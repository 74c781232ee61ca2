package main

import (
	"context"
	"io"

	"github.com/fedpipe/fedpipe/admin"
)

// cmdStatus prints a running fedpipe's status page as tables: it asks the
// admin listener (admin.listen, or --url) with admin.token.
func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", "", "Print a running fedpipe's status page as tables: consumer groups with lag and stalls, destinations backing off or paused, dead letters. Asks the admin listener (admin.listen, admin.token).", stderr)
	path := configFlags(fs, "admin.listen", "admin.token")
	url := fs.String("url", "", "admin listener to ask, http://host:port (default http://<admin.listen>)")
	cfg, err := loadConfig(fs, path, args)
	if err != nil {
		return err
	}
	base := *url
	if base == "" {
		base = "http://" + cfg.Admin.Listen
	}
	st, err := admin.FetchStatus(ctx, base, cfg.Admin.Token)
	if err != nil {
		return err
	}
	return admin.WriteTables(stdout, st)
}
