package testreceiver

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/segmentio/encoding/json"

	"github.com/fedpipe/fedpipe/federation/txn"
)

// Config configures a Server.
type Config struct {
	// Names are the server names hosted from the start; AddName adds more.
	Names []string
	// Keys finds a sender's public key by origin and key id.
	Keys func(origin, keyID string) (ed25519.PublicKey, error)
	// MaxBodyBytes limits a transaction body (default 2 MiB).
	MaxBodyBytes int64
	// Logger receives rejections at debug level.
	Logger *slog.Logger
}

// Received is one accepted transaction.
type Received struct {
	Origin, Destination, TxnID string
	At                         time.Time
	PDUs                       []json.RawMessage
	EDUs                       []txn.EDU
	// BodyBytes is the size of the request body.
	BodyBytes int
}

// Server is a running receiver.
type Server struct {
	cfg  Config
	ca   *CA
	ln   net.Listener
	http *http.Server
	log  *slog.Logger

	mu         sync.Mutex
	names      map[string]bool
	received   map[string][]Received // by destination, in arrival order
	seen       map[string]bool       // origin|destination|txn id
	inFlight   map[string]bool       // origin|destination
	faults     map[string]*Fault
	rejections int // 429s for overlapping transactions
	duplicates int
	requests   map[string]int // by destination, all requests
	closeOnce  sync.Once
	closeErr   error
	serveDone  chan struct{}
}

// Fault makes a destination misbehave.
type Fault struct {
	// Status, when not 0, is answered with a Matrix error body.
	Status int
	// RetryAfter goes into a 429's retry_after_ms.
	RetryAfter time.Duration
	// Delay waits before answering (the transaction counts as in flight meanwhile).
	Delay time.Duration
	// DropConnection closes the connection without answering.
	DropConnection bool
	// SlowBody dribbles the response out over this long.
	SlowBody time.Duration
	// Times is how many requests the fault applies to; 0 means until cleared.
	Times int
}

// Start starts a receiver on 127.0.0.1 with a port of its own.
func Start(cfg Config) (*Server, error) {
	if cfg.Keys == nil {
		return nil, errors.New("testreceiver: Config.Keys is required to verify signatures")
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 2 << 20
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ca, err := NewCA()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("testreceiver: listening: %w", err)
	}
	s := &Server{
		cfg: cfg, ca: ca, ln: ln, log: log,
		names: map[string]bool{}, received: map[string][]Received{}, seen: map[string]bool{},
		inFlight: map[string]bool{}, faults: map[string]*Fault{}, requests: map[string]int{},
		serveDone: make(chan struct{}),
	}
	for _, n := range cfg.Names {
		s.names[n] = true
	}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /_matrix/federation/v1/send/{txnID}", s.handleSend)
	s.http = &http.Server{Handler: mux, TLSConfig: ca.TLSConfig(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.serveDone)
		_ = s.http.ServeTLS(ln, "", "")
	}()
	return s, nil
}

// Addr is the host:port the receiver listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// CAPool trusts the receiver's certificates.
func (s *Server) CAPool() *x509.CertPool { return s.ca.Pool() }

// CACertPEM is the receiver's CA certificate, for a client's CA file.
func (s *Server) CACertPEM() []byte { return s.ca.PEM() }

// AddName hosts another server name.
func (s *Server) AddName(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.names[name] = true
}

// Names lists the hosted server names.
func (s *Server) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.names))
	for n := range s.names {
		out = append(out, n)
	}
	return out
}

// Close stops the server; it is idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.http.Shutdown(ctx); err != nil {
			s.closeErr = s.http.Close()
		}
		<-s.serveDone
	})
	return s.closeErr
}

// SetFault makes dest misbehave until cleared or f.Times requests have seen it.
func (s *Server) SetFault(dest string, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[dest] = &f
}

// ClearFault makes dest behave again.
func (s *Server) ClearFault(dest string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.faults, dest)
}

// URL is the base URL for requests to a hosted name, for hand-made clients.
func (s *Server) URL(name string) *url.URL {
	return &url.URL{Scheme: "https", Host: name}
}
