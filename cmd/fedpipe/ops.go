package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/fedpipe/fedpipe/federation/signing"
	"github.com/fedpipe/fedpipe/internal/config"
)

func cmdKeygen(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs, _ := newFlagSet("keygen", stderr)
	out := fs.String("out", "", "file to write the new key to (refuses to overwrite)")
	if err := fs.Parse(args); err != nil {
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

func cmdConfig(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: fedpipe config example | fedpipe config check --config FILE")
	}
	switch args[0] {
	case "example":
		_, err := stdout.Write(config.Example())
		return err
	case "check":
		fs, path := newFlagSet("config check", stderr)
		if _, err := loadConfig(fs, path, args[1:]); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "configuration is valid")
		return nil
	default:
		return fmt.Errorf("unknown config subcommand %q (example, check)", args[0])
	}
}
