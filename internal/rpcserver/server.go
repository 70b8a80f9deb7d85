// Package rpcserver serves banger's JSON RPC on a Unix socket: it checks the
// caller's UID (SO_PEERCRED), mints an op id per call, dispatches through a
// fixed handler table, maps errors to wire codes, logs one line per call and
// drains in-flight calls on shutdown.
package rpcserver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/opstage"
	"github.com/banger-dev/banger/internal/safesock"
)

// Limits on the socket. Only the owner and root can connect (the socket is
// 0600), but a buggy or hostile client of theirs must not be able to grow
// the daemon's (or the root helper's) memory or hold its shutdown.
const (
	// MaxRequestBytes bounds one request line. The largest real request
	// (paths, names, boot arguments) is a few KiB.
	MaxRequestBytes = 1 << 20
	// IdleTimeout closes a connection that starts no request for this long.
	// A call in flight is not idle: nothing is read while it runs.
	IdleTimeout = 5 * time.Minute
	// RequestTimeout bounds reading one request line once it has begun
	// (clients write it at once), so a partial line is not held for long.
	RequestTimeout = 10 * time.Second
	// MaxConns bounds the open connections; one more is answered with an
	// error and closed. (Clients open one connection per call.)
	MaxConns = 256
	// WriteTimeout bounds writing one response, so a client that never
	// reads frees its connection and does not hold up shutdown.
	WriteTimeout = 30 * time.Second
)

// Handler serves one method. The returned value is marshalled as the result.
type Handler func(ctx context.Context, params json.RawMessage) (any, error)

// Server is an RPC server. Register handlers before Serve.
type Server struct {
	log      *slog.Logger
	handlers map[string]Handler
	allowed  map[uint32]bool

	baseCtx context.Context
	cancel  context.CancelFunc

	// The limits above; fields so tests can shrink them.
	idleTimeout    time.Duration
	requestTimeout time.Duration
	maxConns       int
	writeTimeout   time.Duration

	mu       sync.Mutex
	ln       net.Listener
	conns    map[net.Conn]struct{}
	inflight map[string]api.Operation
	wg       sync.WaitGroup // in-flight calls
	connWG   sync.WaitGroup
	closing  bool
	refusing atomic.Int32 // connections being refused (maxConns reached)
}

// New returns a server that accepts callers whose UID is in allowedUIDs.
func New(log *slog.Logger, allowedUIDs ...uint32) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		log:      log,
		handlers: map[string]Handler{},
		allowed:  map[uint32]bool{},
		baseCtx:  ctx,
		cancel:   cancel,
		conns:    map[net.Conn]struct{}{},
		inflight: map[string]api.Operation{},

		idleTimeout:    IdleTimeout,
		requestTimeout: RequestTimeout,
		maxConns:       MaxConns,
		writeTimeout:   WriteTimeout,
	}
	for _, u := range allowedUIDs {
		s.allowed[u] = true
	}
	return s
}

// Handle registers a method.
func (s *Server) Handle(method string, h Handler) {
	if _, dup := s.handlers[method]; dup {
		panic("rpcserver: duplicate method " + method)
	}
	s.handlers[method] = h
}

// Methods lists the registered methods, sorted.
func (s *Server) Methods() []string {
	out := make([]string, 0, len(s.handlers))
	for m := range s.handlers {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// InFlight lists the calls being served, excluding the caller's own op.
func (s *Server) InFlight(exceptOp string) []api.Operation {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []api.Operation{}
	for id, op := range s.inflight {
		if id == exceptOp {
			continue
		}
		if t, err := time.Parse(time.RFC3339Nano, op.StartedAt); err == nil {
			op.Seconds = time.Since(t).Seconds()
		}
		out = append(out, op)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].StartedAt < out[j].StartedAt })
	return out
}

// Serve accepts connections until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			continue
		}
		if len(s.conns) >= s.maxConns {
			s.mu.Unlock()
			if s.refusing.Add(1) > maxRefusing {
				s.refusing.Add(-1)
				c.Close()
				continue
			}
			go func() {
				defer s.refusing.Add(-1)
				s.refuse(c)
			}()
			continue
		}
		s.conns[c] = struct{}{}
		s.connWG.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// Shutdown stops accepting, waits for in-flight calls until ctx ends, then
// cancels the ones still running and closes every connection.
func (s *Server) Shutdown(ctx context.Context) {
	s.mu.Lock()
	s.closing = true
	if s.ln != nil {
		s.ln.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Warn("shutdown deadline reached; cancelling in-flight calls", "in_flight", len(s.InFlight("")))
		s.cancel()
		// Answers blocked on clients that do not read fail now.
		s.mu.Lock()
		for c := range s.conns {
			_ = c.SetWriteDeadline(time.Unix(1, 0))
		}
		s.mu.Unlock()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	}
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
}

func (s *Server) serveConn(c net.Conn) {
	defer s.connWG.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	cred, err := safesock.PeerCred(c)
	authorized := err == nil && s.allowed[cred.UID]
	r := bufio.NewReaderSize(c, 64<<10)
	enc := json.NewEncoder(c)
	// send writes one response within writeTimeout.
	send := func(resp api.Response) error {
		_ = c.SetWriteDeadline(time.Now().Add(s.writeTimeout))
		return enc.Encode(resp)
	}
	for {
		// idleTimeout until a request begins, then requestTimeout for it.
		_ = c.SetReadDeadline(time.Now().Add(s.idleTimeout))
		line, err := readLine(r, func() { _ = c.SetReadDeadline(time.Now().Add(s.requestTimeout)) })
		if err != nil {
			if errors.Is(err, errTooLong) {
				_ = send(s.errorResponse(0, logging.NewOpID(), errdefs.New(errdefs.BadRequest, "request larger than %d bytes", MaxRequestBytes)))
			}
			return
		}
		if !authorized {
			opID := logging.NewOpID()
			s.log.Warn("rpc refused", "op_id", opID, "uid", cred.UID, "pid", cred.PID)
			_ = send(s.errorResponse(0, opID, errdefs.New(errdefs.Unauthorized, "uid %d may not use this socket", cred.UID)))
			return
		}
		// A call is in flight until its response is written, so Shutdown
		// never closes the connection under an answer (daemon.shutdown's own).
		s.mu.Lock()
		closing := s.closing
		if !closing {
			s.wg.Add(1)
		}
		s.mu.Unlock()
		if closing {
			_ = send(s.errorResponse(0, logging.NewOpID(), errdefs.New(errdefs.Unavailable, "daemon is shutting down")))
			return
		}
		err = send(s.dispatch(line, cred))
		s.wg.Done()
		if err != nil {
			return
		}
	}
}

// maxRefusing bounds the connections being refused at once; past it they
// are closed without an answer.
const maxRefusing = 16

// refuse answers a connection past maxConns with an error and closes it,
// all within a second. It first waits for the request (4 KiB of it at
// most), so the client is not cut off while still sending and reads the
// answer. (Not unavailable: that would make the CLI try to start a second
// daemon.)
func (s *Server) refuse(c net.Conn) {
	defer c.Close()
	s.log.Warn("rpc refused: too many connections", "max", s.maxConns)
	_ = c.SetDeadline(time.Now().Add(time.Second))
	_, _ = bufio.NewReaderSize(c, 4096).ReadSlice('\n')
	_ = json.NewEncoder(c).Encode(s.errorResponse(0, logging.NewOpID(), errdefs.New(errdefs.OperationFailed, "too many connections (%d open, the most served); retry when some close", s.maxConns)))
}

var errTooLong = errors.New("request too long")

var opIDRE = regexp.MustCompile(`^op-[0-9a-f]{6}$`)

// readLine returns the next line, "\n" included; begun is called when its
// first byte is in. It takes whatever has arrived at each step, so a line is
// refused as soon as more than MaxRequestBytes of it is in, not when the
// next buffer fills.
func readLine(r *bufio.Reader, begun func()) ([]byte, error) {
	var buf []byte
	for {
		if _, err := r.Peek(1); err != nil { // wait for data
			return nil, err
		}
		if buf == nil {
			begun()
		}
		b, _ := r.Peek(r.Buffered())
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[:i+1]
		}
		buf = append(buf, b...)
		r.Discard(len(b))
		if len(buf) > MaxRequestBytes+1 { // +1: the "\n"
			return nil, errTooLong
		}
		if buf[len(buf)-1] == '\n' {
			return buf, nil
		}
	}
}

func (s *Server) dispatch(line []byte, cred safesock.Cred) api.Response {
	opID := logging.NewOpID()
	start := time.Now()
	var req api.Request
	if err := json.Unmarshal(line, &req); err != nil {
		s.log.Warn("rpc malformed", "op_id", opID, "error", err.Error())
		return s.errorResponse(0, opID, errdefs.New(errdefs.BadRequest, "malformed request: %v", err))
	}
	if opIDRE.MatchString(req.OpID) {
		opID = req.OpID
	}
	log := s.log.With("op_id", opID, "method", req.Method, "uid", cred.UID)
	if req.V != api.ProtocolVersion {
		log.Warn("rpc bad version", "v", req.V)
		return s.errorResponse(req.ID, opID, errdefs.New(errdefs.BadVersion, "protocol version %d is not supported (daemon speaks %d); restart the daemon or upgrade the CLI", req.V, api.ProtocolVersion))
	}
	h, ok := s.handlers[req.Method]
	if !ok {
		log.Warn("rpc unknown method")
		return s.errorResponse(req.ID, opID, errdefs.New(errdefs.UnknownMethod, "unknown method %q", req.Method))
	}
	s.mu.Lock()
	s.inflight[opID] = api.Operation{OpID: opID, Method: req.Method, StartedAt: start.UTC().Format(time.RFC3339Nano)}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.inflight, opID)
		s.mu.Unlock()
	}()
	ctx := logging.WithOpID(logging.With(s.baseCtx, s.log), opID)
	// What the handler reports through opstage.Set is the call's stage in
	// InFlight (daemon.operations.list).
	ctx = opstage.With(ctx, func(stage string) {
		s.mu.Lock()
		if op, ok := s.inflight[opID]; ok {
			op.Stage = stage
			s.inflight[opID] = op
		}
		s.mu.Unlock()
		log.Debug("rpc stage", "stage", stage)
	})
	result, err := s.call(ctx, h, req.Params)
	dur := time.Since(start)
	if err != nil {
		log.Info("rpc failed", "duration_ms", dur.Milliseconds(), "code", string(errdefs.CodeOf(err)), "error", err.Error())
		return s.errorResponse(req.ID, opID, err)
	}
	raw, err := json.Marshal(result)
	if err != nil {
		return s.errorResponse(req.ID, opID, fmt.Errorf("encode result: %w", err))
	}
	log.Info("rpc completed", "duration_ms", dur.Milliseconds())
	return api.Response{ID: req.ID, OpID: opID, Result: raw}
}

func (s *Server) call(ctx context.Context, h Handler, params json.RawMessage) (res any, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("rpc handler panicked", "op_id", logging.OpID(ctx), "panic", fmt.Sprint(r))
			err = fmt.Errorf("internal error: %v", r)
		}
	}()
	return h(ctx, params)
}

func (s *Server) errorResponse(id uint64, opID string, err error) api.Response {
	return api.Response{ID: id, OpID: opID, Error: &api.WireError{
		Code:    string(errdefs.CodeOf(err)),
		Message: err.Error(),
		OpID:    opID,
	}}
}

// Decode unmarshals params strictly into v; failures are bad_request.
func Decode(params json.RawMessage, v any) error {
	if len(params) == 0 {
		params = []byte("{}")
	}
	dec := json.NewDecoder(bytesReader(params))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errdefs.New(errdefs.BadRequest, "bad parameters: %v", err)
	}
	return nil
}
