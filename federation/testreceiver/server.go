package testreceiver

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/federation/xmatrix"
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

func matrixError(w http.ResponseWriter, status int, errcode, msg string, extra map[string]any) {
	body := map[string]any{"errcode": errcode, "error": msg}
	for k, v := range extra {
		body[k] = v
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func (s *Server) handleSend(w http.ResponseWriter, r *http.Request) {
	h, err := xmatrix.Parse(r.Header.Get("Authorization"))
	if err != nil {
		matrixError(w, http.StatusUnauthorized, "M_UNAUTHORIZED", err.Error(), nil)
		return
	}
	dest := h.Destination
	if dest == "" {
		dest = r.Host
	}
	s.mu.Lock()
	hosted := s.names[dest]
	s.requests[dest]++
	fault := s.takeFault(dest)
	s.mu.Unlock()
	if !hosted {
		matrixError(w, http.StatusNotFound, "M_UNRECOGNIZED", "no server "+dest+" here", nil)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, s.cfg.MaxBodyBytes+1))
	if err != nil {
		matrixError(w, http.StatusBadRequest, "M_BAD_JSON", "reading body: "+err.Error(), nil)
		return
	}
	if int64(len(body)) > s.cfg.MaxBodyBytes {
		matrixError(w, http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "body too large", nil)
		return
	}
	pub, err := s.cfg.Keys(h.Origin, h.KeyID)
	if err != nil {
		matrixError(w, http.StatusUnauthorized, "M_UNAUTHORIZED", "unknown key: "+err.Error(), nil)
		return
	}
	if err := xmatrix.Verify(h, r.Method, r.URL.RequestURI(), dest, body, pub); err != nil {
		matrixError(w, http.StatusUnauthorized, "M_UNAUTHORIZED", err.Error(), nil)
		return
	}
	var t struct {
		Origin         string            `json:"origin"`
		OriginServerTS *int64            `json:"origin_server_ts"`
		PDUs           []json.RawMessage `json:"pdus"`
		EDUs           []txn.EDU         `json:"edus"`
	}
	if err := json.Unmarshal(body, &t); err != nil || t.OriginServerTS == nil || t.PDUs == nil {
		matrixError(w, http.StatusBadRequest, "M_BAD_JSON", "not a transaction", nil)
		return
	}
	if t.Origin != h.Origin {
		matrixError(w, http.StatusBadRequest, "M_FORBIDDEN", "origin differs from the signed origin", nil)
		return
	}
	if len(t.PDUs) > txn.MaxPDUs || len(t.EDUs) > txn.MaxEDUs {
		matrixError(w, http.StatusBadRequest, "M_BAD_JSON", fmt.Sprintf("%d PDUs, %d EDUs: over the limits", len(t.PDUs), len(t.EDUs)), nil)
		return
	}
	txnID := r.PathValue("txnID")
	pair := h.Origin + "|" + dest
	s.mu.Lock()
	if s.inFlight[pair] {
		s.rejections++
		s.mu.Unlock()
		matrixError(w, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "a transaction from this origin is already being processed", map[string]any{"retry_after_ms": 100})
		return
	}
	s.inFlight[pair] = true
	s.mu.Unlock()
	var releaseOnce sync.Once
	release := func() {
		releaseOnce.Do(func() {
			s.mu.Lock()
			delete(s.inFlight, pair)
			s.mu.Unlock()
		})
	}
	defer release()

	if fault != nil {
		if fault.Delay > 0 {
			select {
			case <-time.After(fault.Delay):
			case <-r.Context().Done():
				return
			}
		}
		if fault.DropConnection {
			// Release first: the client sees the close at once and may resend
			// (net/http retries an idempotent PUT), which is not an overlap.
			release()
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
				}
			}
			return
		}
		if fault.Status != 0 {
			var extra map[string]any
			if fault.RetryAfter > 0 {
				extra = map[string]any{"retry_after_ms": fault.RetryAfter.Milliseconds()}
			}
			matrixError(w, fault.Status, errcodeFor(fault.Status), "injected fault", extra)
			return
		}
	}

	key := pair + "|" + txnID
	s.mu.Lock()
	if s.seen[key] {
		s.duplicates++
	} else {
		s.seen[key] = true
		s.received[dest] = append(s.received[dest], Received{Origin: h.Origin, Destination: dest, TxnID: txnID, At: time.Now(), PDUs: t.PDUs, EDUs: t.EDUs, BodyBytes: len(body)})
	}
	s.mu.Unlock()

	resp := pduResults(t.PDUs)
	w.Header().Set("Content-Type", "application/json")
	if fault != nil && fault.SlowBody > 0 {
		w.WriteHeader(http.StatusOK)
		step := fault.SlowBody / time.Duration(len(resp)+1)
		for i := range resp {
			_, _ = w.Write(resp[i : i+1])
			if f, ok := w.(http.Flusher); ok {
				f.Flush()
			}
			time.Sleep(step)
		}
		return
	}
	_, _ = w.Write(resp)
}

// takeFault returns dest's fault for this request, counting it down. s.mu is held.
func (s *Server) takeFault(dest string) *Fault {
	f, ok := s.faults[dest]
	if !ok {
		return nil
	}
	cp := *f
	if f.Times > 0 {
		f.Times--
		if f.Times == 0 {
			delete(s.faults, dest)
		}
	}
	return &cp
}

func errcodeFor(status int) string {
	switch status {
	case http.StatusTooManyRequests:
		return "M_LIMIT_EXCEEDED"
	case http.StatusForbidden:
		return "M_FORBIDDEN"
	case http.StatusUnauthorized:
		return "M_UNAUTHORIZED"
	case http.StatusNotFound:
		return "M_UNRECOGNIZED"
	default:
		return "M_UNKNOWN"
	}
}

// pduResults answers {} for every PDU, keyed by its event_id where it has one
// (room versions 1 and 2); later versions' ids are hashes the receiver does not compute.
func pduResults(pdus []json.RawMessage) []byte {
	var b bytes.Buffer
	b.WriteString(`{"pdus":{`)
	n := 0
	for _, p := range pdus {
		var ev struct {
			EventID string `json:"event_id"`
		}
		if json.Unmarshal(p, &ev) == nil && ev.EventID != "" {
			if n > 0 {
				b.WriteByte(',')
			}
			q, _ := json.Marshal(ev.EventID)
			b.Write(q)
			b.WriteString(":{}")
			n++
		}
	}
	b.WriteString("}}")
	return b.Bytes()
}

// URL is the base URL for requests to a hosted name, for hand-made clients.
func (s *Server) URL(name string) *url.URL {
	return &url.URL{Scheme: "https", Host: name}
}
