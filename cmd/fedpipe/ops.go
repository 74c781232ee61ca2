package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"

	"github.com/fedpipe/fedpipe/federation/signing"
	"github.com/fedpipe/fedpipe/internal/config"
)

func cmdKeygen(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("keygen", "", "Write a new ed25519 signing key in Synapse's format (ed25519 <version> <seed>).", stderr)
	out := fs.String("out", "", "`file` to write the new key to (required; refuses to overwrite)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("keygen: --out FILE is required")
	}
	k, err := signing.WriteNewKeyFile(*out)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (key id %s)\n", *out, k.ID)
	return nil
}

func cmdConfig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return subcommands(ctx, "config", map[string]command{
		"example": {"print a commented configuration file: every key, its default and what it does", cmdConfigExample},
		"check":   {"load a configuration (file, FEDPIPE_* variables and flags) and report every invalid key", cmdConfigCheck},
	}, args, stdout, stderr)
}

func cmdConfigExample(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("config example", "", "Print a commented configuration file: every key, its default and what it does.", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	_, err := stdout.Write(config.Example())
	return err
}

func cmdConfigCheck(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("config check", "", "Load a configuration (file, FEDPIPE_* variables and flags) and report every invalid key.", stderr)
	path := configFlags(fs)
	if _, err := loadConfig(fs, path, args); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "configuration is valid")
	return nil
}

// cmdVersion prints what this binary was built from, as the Go toolchain
// recorded it: the module version (a tag, or "(devel)" for a checkout), the
// VCS revision, its time and whether the tree had local changes, and Go's
// version.
func cmdVersion(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", "", "Print fedpipe's version: module version, VCS revision and time, and the Go version it was built with.", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return errors.New("version: this binary carries no build information")
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	fmt.Fprintf(stdout, "fedpipe %s\n", info.Main.Version)
	if rev := settings["vcs.revision"]; rev != "" {
		dirty := ""
		if settings["vcs.modified"] == "true" {
			dirty = " (modified)"
		}
		fmt.Fprintf(stdout, "revision %s%s, %s\n", rev, dirty, settings["vcs.time"])
	}
	fmt.Fprintf(stdout, "%s %s/%s\n", info.GoVersion, settings["GOOS"], settings["GOARCH"])
	return nil
}
