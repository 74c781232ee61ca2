package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/fedpipe/fedpipe/internal/config"
)

// newFlagSet returns a command's flag set with --config and a flag per config key.
func newFlagSet(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("fedpipe "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", os.Getenv("FEDPIPE_CONFIG"), "YAML configuration file (env FEDPIPE_CONFIG)")
	config.RegisterFlags(fs)
	return fs, path
}

// loadConfig parses the command line and loads the configuration it names.
func loadConfig(fs *flag.FlagSet, path *string, args []string) (config.Config, error) {
	if err := fs.Parse(args); err != nil {
		return config.Config{}, err
	}
	if fs.NArg() > 0 {
		return config.Config{}, fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	return config.Load(*path, os.Environ(), fs)
}

func newLogger(level string, w io.Writer) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level)) // validated by config
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}
