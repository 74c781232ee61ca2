package testreceiver

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/segmentio/encoding/json"

	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/federation/xmatrix"
)

// sendRequest is a PUT /send that passed authentication and the transaction checks.
type sendRequest struct {
	origin, dest, txnID string
	pdus                []json.RawMessage
	edus                []txn.EDU
	bodyBytes           int
}

// pair keys the one transaction an origin may have in flight to a destination.
func (q sendRequest) pair() string { return q.origin + "|" + q.dest }

// rejection is an answer with a Matrix error body.
type rejection struct {
	status       int
	errcode, msg string
	extra        map[string]any
}

func (j *rejection) write(w http.ResponseWriter) {
	matrixError(w, j.status, j.errcode, j.msg, j.extra)
}

func reject(status int, errcode, msg string) *rejection {
	return &rejection{status: status, errcode: errcode, msg: msg}
}

func (s *Server) handleSend(w http.ResponseWriter, r *http.Request) {
	req, fault, rej := s.admit(r)
	if rej != nil {
		rej.write(w)
		return
	}
	release, rej := s.claim(req.pair())
	if rej != nil {
		rej.write(w)
		return
	}
	defer release()
	if fault != nil && injectFault(w, r, fault, release) {
		return
	}
	s.record(req)
	writeResults(w, pduResults(req.pdus), fault)
}

// admit authenticates a send request and checks its transaction. It counts the
// request and takes the destination's fault before any check, so a rejected
// request still uses up a fault.
func (s *Server) admit(r *http.Request) (sendRequest, *Fault, *rejection) {
	h, err := xmatrix.Parse(r.Header.Get("Authorization"))
	if err != nil {
		return sendRequest{}, nil, reject(http.StatusUnauthorized, "M_UNAUTHORIZED", err.Error())
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
		return sendRequest{}, nil, reject(http.StatusNotFound, "M_UNRECOGNIZED", "no server "+dest+" here")
	}
	body, rej := s.readBody(r)
	if rej != nil {
		return sendRequest{}, nil, rej
	}
	if rej := s.verify(r, h, dest, body); rej != nil {
		return sendRequest{}, nil, rej
	}
	pdus, edus, rej := parseTransaction(body, h.Origin)
	if rej != nil {
		return sendRequest{}, nil, rej
	}
	return sendRequest{
		origin: h.Origin, dest: dest, txnID: r.PathValue("txnID"),
		pdus: pdus, edus: edus, bodyBytes: len(body),
	}, fault, nil
}

// readBody reads the request body up to Config.MaxBodyBytes.
func (s *Server) readBody(r *http.Request) ([]byte, *rejection) {
	body, err := io.ReadAll(io.LimitReader(r.Body, s.cfg.MaxBodyBytes+1))
	if err != nil {
		return nil, reject(http.StatusBadRequest, "M_BAD_JSON", "reading body: "+err.Error())
	}
	if int64(len(body)) > s.cfg.MaxBodyBytes {
		return nil, reject(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "body too large")
	}
	return body, nil
}

// verify checks the X-Matrix signature against the origin's key.
func (s *Server) verify(r *http.Request, h xmatrix.Header, dest string, body []byte) *rejection {
	pub, err := s.cfg.Keys(h.Origin, h.KeyID)
	if err != nil {
		return reject(http.StatusUnauthorized, "M_UNAUTHORIZED", "unknown key: "+err.Error())
	}
	if err := xmatrix.Verify(h, r.Method, r.URL.RequestURI(), dest, body, pub); err != nil {
		return reject(http.StatusUnauthorized, "M_UNAUTHORIZED", err.Error())
	}
	return nil
}

// parseTransaction checks that body is a transaction from the signed origin
// within the specification's limits.
func parseTransaction(body []byte, signedOrigin string) ([]json.RawMessage, []txn.EDU, *rejection) {
	var t struct {
		Origin         string            `json:"origin"`
		OriginServerTS *int64            `json:"origin_server_ts"`
		PDUs           []json.RawMessage `json:"pdus"`
		EDUs           []txn.EDU         `json:"edus"`
	}
	if err := json.Unmarshal(body, &t); err != nil || t.OriginServerTS == nil || t.PDUs == nil {
		return nil, nil, reject(http.StatusBadRequest, "M_BAD_JSON", "not a transaction")
	}
	if t.Origin != signedOrigin {
		return nil, nil, reject(http.StatusBadRequest, "M_FORBIDDEN", "origin differs from the signed origin")
	}
	if len(t.PDUs) > txn.MaxPDUs || len(t.EDUs) > txn.MaxEDUs {
		return nil, nil, reject(http.StatusBadRequest, "M_BAD_JSON", fmt.Sprintf("%d PDUs, %d EDUs: over the limits", len(t.PDUs), len(t.EDUs)))
	}
	return t.PDUs, t.EDUs, nil
}

// claim marks pair's transaction in flight, answering 429 to an overlapping one
// as Synapse does. release frees the slot; calling it more than once is safe.
func (s *Server) claim(pair string) (release func(), rej *rejection) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inFlight[pair] {
		s.rejections++
		return nil, &rejection{
			status: http.StatusTooManyRequests, errcode: "M_LIMIT_EXCEEDED",
			msg:   "a transaction from this origin is already being processed",
			extra: map[string]any{"retry_after_ms": 100},
		}
	}
	s.inFlight[pair] = true
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.inFlight, pair)
			s.mu.Unlock()
		})
	}, nil
}

// injectFault delays, drops or fails the request as f says. It reports whether
// it answered (or abandoned) the request, so the handler stops.
func injectFault(w http.ResponseWriter, r *http.Request, f *Fault, release func()) bool {
	if f.Delay > 0 {
		select {
		case <-time.After(f.Delay):
		case <-r.Context().Done():
			return true
		}
	}
	if f.DropConnection {
		// Release first: the client sees the close at once and may resend
		// (net/http retries an idempotent PUT), which is not an overlap.
		release()
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close()
			}
		}
		return true
	}
	if f.Status != 0 {
		var extra map[string]any
		if f.RetryAfter > 0 {
			extra = map[string]any{"retry_after_ms": f.RetryAfter.Milliseconds()}
		}
		matrixError(w, f.Status, errcodeFor(f.Status), "injected fault", extra)
		return true
	}
	return false
}

// record keeps an accepted transaction, or counts it as a duplicate when its
// transaction id was seen before from this origin to this destination.
func (s *Server) record(req sendRequest) {
	key := req.pair() + "|" + req.txnID
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen[key] {
		s.duplicates++
		return
	}
	s.seen[key] = true
	s.received[req.dest] = append(s.received[req.dest], Received{
		Origin: req.origin, Destination: req.dest, TxnID: req.txnID, At: time.Now(),
		PDUs: req.pdus, EDUs: req.edus, BodyBytes: req.bodyBytes,
	})
}

// writeResults answers 200 with resp, dribbled out over the fault's SlowBody if
// it has one.
func writeResults(w http.ResponseWriter, resp []byte, f *Fault) {
	w.Header().Set("Content-Type", "application/json")
	if f == nil || f.SlowBody <= 0 {
		_, _ = w.Write(resp)
		return
	}
	w.WriteHeader(http.StatusOK)
	step := f.SlowBody / time.Duration(len(resp)+1)
	for i := range resp {
		_, _ = w.Write(resp[i : i+1])
		if fl, ok := w.(http.Flusher); ok {
			fl.Flush()
		}
		time.Sleep(step)
	}
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
