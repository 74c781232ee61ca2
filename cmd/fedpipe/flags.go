package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"

	"github.com/fedpipe/fedpipe/internal/config"
)

// Configuration keys a stage reads, as config.RegisterFlags scopes: what every
// stage stands on (infra: brokers, database, the admin listener) plus its own
// section. The file and FEDPIPE_* variables may set every key whatever the
// command (one file serves every stage); a command's flags are only the keys
// it reads.
var (
	infraKeys = append(slices.Clip(toolKeys), "admin")
	// toolKeys are what a one-off command (rebuild, resend) stands on: the
	// infra without the admin listener, which it never opens.
	toolKeys  = []string{"instance", "data_dir", "log_level", "kafka", "database"}
	stageKeys = map[string][]string{
		"relay":    {"relay"},
		"presence": {"server_name", "presence"},
		"router":   {"server_name", "router"},
		"sender":   append([]string{"server_name", "signing_key_path"}, senderFederationKeys...),
		"ingest":   {"server_name", "ingest"},
		"keys":     append([]string{"server_name", "signing_key_path"}, keysFederationKeys...),
	}
	// The federation section is the sender's (sending) and the keys
	// stage's (the listener publishing our keys): each reads its own keys,
	// together all of them (TestEveryCommandsHelp holds them so).
	senderFederationKeys = []string{"federation.static", "federation.ca_file", "federation.insecure_skip_verify", "federation.allowed_networks",
		"federation.request_timeout", "federation.backoff_initial", "federation.backoff_max", "federation.max_transaction_bytes", "federation.linger"}
	keysFederationKeys = []string{"federation.listen", "federation.tls_cert", "federation.tls_key", "federation.key_validity"}
	migrateKeys        = []string{"database.url"}
	topicsKeys         = []string{"log_level", "kafka.brokers", "kafka.topic_prefix", "kafka.partitions", "kafka.outbound_partitions", "kafka.replication_factor"}
)

// newFlagSet returns the flag set of `fedpipe <name>`; its --help prints
// usage (the arguments after the flags), the summary and the flags.
func newFlagSet(name, usage, summary string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("fedpipe "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: fedpipe %s [flags]%s\n\n%s\n", name, usage, summary)
		printFlags(stderr, fs)
	}
	return fs
}

// configFlags adds --config and a flag per configuration key in scope
// (config.RegisterFlags; every key when scope is empty) to fs.
func configFlags(fs *flag.FlagSet, scope ...string) *string {
	path := fs.String("config", os.Getenv("FEDPIPE_CONFIG"), "YAML configuration `file` (env FEDPIPE_CONFIG)")
	config.RegisterFlags(fs, scope...)
	return path
}

// typed is a flag value that names its own type for --help (config's flags).
type typed interface{ Type() string }

// printFlags lists a flag set's flags with their types: the value's own
// (config keys), else the standard one (`file` in the usage names it).
func printFlags(w io.Writer, fs *flag.FlagSet) {
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		if n == 0 {
			fmt.Fprintln(w, "\nflags:")
		}
		n++
		name, usage := flag.UnquoteUsage(f)
		if t, ok := f.Value.(typed); ok {
			name = t.Type()
			if name == "bool" {
				name = ""
			}
		}
		fmt.Fprintf(w, "  --%s", f.Name)
		if name != "" {
			fmt.Fprintf(w, " %s", name)
		}
		fmt.Fprintf(w, "\n    \t%s", strings.ReplaceAll(usage, "\n", "\n    \t"))
		if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" {
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
	if n == 0 {
		fmt.Fprintln(w, "\nno flags")
	}
}

// errReported is a command-line error the flag package has printed already,
// with the command's usage.
type errReported struct{ err error }

func (e errReported) Error() string { return e.err.Error() }
func (e errReported) Unwrap() error { return e.err }

// parse parses a command's arguments, which must all be flags.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errReported{err}
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v (see %s --help)", fs.Args(), fs.Name())
	}
	return nil
}

// loadConfig parses the command line and loads the configuration it names.
func loadConfig(fs *flag.FlagSet, path *string, args []string) (config.Config, error) {
	if err := parse(fs, args); err != nil {
		return config.Config{}, err
	}
	return config.Load(*path, os.Environ(), fs)
}

func newLogger(level string, w io.Writer) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level)) // validated by config
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}
