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

// command is one command or subcommand: its summary and what it runs.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() map[string]command {
	cmds := map[string]command{
		"keygen":  {"write a new ed25519 signing key in Synapse's format (keygen --out FILE)", cmdKeygen},
		"config":  {"config example: print a commented configuration file; config check: validate one", cmdConfig},
		"offsets": {"a consumer group's offsets, shown and moved to replay or skip (offsets show|reset --group G)", cmdOffsets},
		"status":  {"a running fedpipe's status page as tables, asked of admin.listen (status [--url URL])", cmdStatus},
		"soak":    {"crash soak: SIGKILL and restart the stage process under load, check every delivery (docs/operations.md)", cmdSoak},
		"version": {"print fedpipe's version: module version, VCS revision, Go version", cmdVersion},
		"rebuild": {"rebuild router: the router's membership tables from the compacted state topic", cmdRebuild},
		"resend":  {"send a remote that lost data what it missed since a position or time, through catch-up", cmdResend},
	}
	addPipelineCommands(cmds)
	return cmds
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// runMain runs a command line and returns the exit code: 0 when the command
// succeeded or its help was asked for, 1 after printing the error otherwise.
func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := dispatch(ctx, args, stdout, stderr)
	switch {
	case err == nil || errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(errReported)):
		return 1 // the flag package printed it, with the usage
	}
	fmt.Fprintf(stderr, "fedpipe: %v\n", err)
	return 1
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmds := commands()
	if len(args) > 1 && args[0] == "help" {
		args = append(args[1:], "--help") // fedpipe help sender: fedpipe sender --help
	}
	if len(args) == 0 || isHelp(args[0]) {
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

func isHelp(arg string) bool {
	return arg == "help" || arg == "-h" || arg == "--help" || arg == "-help"
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
	fmt.Fprintln(w, "\nEvery configuration key is an environment variable (FEDPIPE_KAFKA_BROKERS=...) and, for the")
	fmt.Fprintln(w, "commands that read it, a flag (--kafka.brokers=...); `fedpipe config example` lists them.")
	fmt.Fprintln(w, "`fedpipe <command> --help` shows a command's flags.")
}

// subcommands runs `fedpipe <name> <sub> ...`: with no subcommand or an unknown
// one it prints the list and fails, with --help it prints the list.
func subcommands(ctx context.Context, name string, subs map[string]command, args []string, stdout, stderr io.Writer) error {
	list := func() {
		fmt.Fprintf(stderr, "usage: fedpipe %s <subcommand> [flags]\n\nsubcommands:\n", name)
		names := make([]string, 0, len(subs))
		for n := range subs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(stderr, "  %-8s %s\n", n, subs[n].summary)
		}
		fmt.Fprintf(stderr, "\n`fedpipe %s <subcommand> --help` shows a subcommand's flags.\n", name)
	}
	if len(args) > 0 && isHelp(args[0]) {
		list()
		return nil
	}
	if len(args) == 0 {
		list()
		return fmt.Errorf("%s: no subcommand given", name)
	}
	c, ok := subs[args[0]]
	if !ok {
		list()
		return fmt.Errorf("unknown %s subcommand %q", name, args[0])
	}
	return c.run(ctx, args[1:], stdout, stderr)
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
