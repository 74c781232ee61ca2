// Command fedpipe runs the federation pipeline: every stage in one process
// (`fedpipe run`), one stage per process (`fedpipe relay|presence|router|sender|ingest`),
// and the operations around it. It only wires components; the logic lives in
// producers/, consumers/, federation/ and schema/.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// command is one subcommand: its summary and what it runs.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() map[string]command {
	cmds := map[string]command{
		"keygen": {"keygen --out FILE: write a new ed25519 signing key in Synapse's format", cmdKeygen},
		"config": {"config example: print a commented configuration file; config check: validate one", cmdConfig},
		"soak":   {"crash soak: SIGKILL and restart the stage process under load, check every delivery (docs/operations.md)", cmdSoak},
	}
	addPipelineCommands(cmds)
	return cmds
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(os.Stderr, "fedpipe: %v\n", err)
		}
		os.Exit(1)
	}
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmds := commands()
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stderr, cmds)
		if len(args) == 0 {
			return errors.New("no command given")
		}
		return nil
	}
	c, ok := cmds[args[0]]
	if !ok {
		usage(stderr, cmds)
		return fmt.Errorf("unknown command %q", args[0])
	}
	return c.run(ctx, args[1:], stdout, stderr)
}

func usage(w io.Writer, cmds map[string]command) {
	fmt.Fprintln(w, "usage: fedpipe <command> [--config FILE] [--<key>=<value> ...]")
	fmt.Fprintln(w, "\ncommands:")
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(w, "\nEvery configuration key is a flag (--kafka.brokers=...) and an environment variable")
	fmt.Fprintln(w, "(FEDPIPE_KAFKA_BROKERS=...); `fedpipe config example` lists them. `fedpipe <command> -h` shows a command's flags.")
}

// splitList parses a comma-separated flag value.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
