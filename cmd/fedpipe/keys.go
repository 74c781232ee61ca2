package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"

	"golang.org/x/sync/errgroup"

	"github.com/fedpipe/fedpipe/federation/keyserver"
	"github.com/fedpipe/fedpipe/federation/signing"
)

// serveKeys runs the stage "keys": the federation-facing listener publishing
// every key of the signing key file at GET /_matrix/key/v2/server, over HTTPS
// with federation.tls_cert, or plain HTTP behind a TLS-terminating proxy. It
// does nothing when federation.listen is empty.
func (in *infra) serveKeys(ctx context.Context, g *errgroup.Group) error {
	fc := in.cfg.Federation
	if fc.Listen == "" {
		return nil
	}
	keys, err := signing.LoadKeyFile(in.cfg.KeyPath())
	if err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	h, err := keyserver.NewHandler(keyserver.Config{ServerName: in.cfg.ServerName, Keys: keys, Validity: fc.KeyValidity})
	if err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	var tlsConf *tls.Config
	if fc.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(fc.TLSCert, fc.TLSKey)
		if err != nil {
			return fmt.Errorf("federation.tls_cert and tls_key: %w", err)
		}
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	ln, err := net.Listen("tcp", fc.Listen)
	if err != nil {
		return fmt.Errorf("federation listener: %w", err)
	}
	if tlsConf != nil {
		ln = tls.NewListener(ln, tlsConf)
	}
	serveListener(ctx, g, "federation", ln, h, in)
	return nil
}
