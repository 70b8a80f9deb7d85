// Package rpcserver serves banger's JSON RPC on a Unix socket: it checks the
// caller's UID (SO_PEERCRED), mints an op id per call, dispatches through a
// fixed handler table, maps errors to wire codes, logs one line per call and
// drains in-flight calls on shutdown.
package rpcserver

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/safesock"
)

// MaxRequestBytes bounds one request line.
const MaxRequestBytes = 4 << 20

// Handler serves one method. The returned value is marshalled as the result.
type Handler func(ctx context.Context, params json.RawMessage) (any, error)

// Server is an RPC server. Register handlers before Serve.
type Server struct {
	log      *slog.Logger
	handlers map[string]Handler
	allowed  map[uint32]bool

	baseCtx context.Context
	cancel  context.CancelFunc

	mu       sync.Mutex
	ln       net.Listener
	conns    map[net.Conn]struct{}
	inflight map[string]api.Operation
	wg       sync.WaitGroup // in-flight calls
	connWG   sync.WaitGroup
	closing  bool
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
	for {
		line, err := readLine(r)
		if err != nil {
			if errors.Is(err, errTooLong) {
				_ = enc.Encode(s.errorResponse(0, logging.NewOpID(), errdefs.New(errdefs.BadRequest, "request larger than %d bytes", MaxRequestBytes)))
			}
			return
		}
		if !authorized {
			opID := logging.NewOpID()
			s.log.Warn("rpc refused", "op_id", opID, "uid", cred.UID, "pid", cred.PID)
			_ = enc.Encode(s.errorResponse(0, opID, errdefs.New(errdefs.Unauthorized, "uid %d may not use this socket", cred.UID)))
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
			_ = enc.Encode(s.errorResponse(0, logging.NewOpID(), errdefs.New(errdefs.Unavailable, "daemon is shutting down")))
			return
		}
		err = enc.Encode(s.dispatch(line, cred))
		s.wg.Done()
		if err != nil {
			return
		}
	}
}

var errTooLong = errors.New("request too long")

var opIDRE = regexp.MustCompile(`^op-[0-9a-f]{6}$`)

func readLine(r *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > MaxRequestBytes {
			return nil, errTooLong
		}
		if err == nil {
			return buf, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
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
	ctx = context.WithValue(ctx, stageKey{}, func(stage string) {
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

type stageKey struct{}

// SetStage records what the current call is doing, for progress displays
// (daemon.operations.list shows it). It is a no-op outside a call.
func SetStage(ctx context.Context, stage string) {
	if f, ok := ctx.Value(stageKey{}).(func(string)); ok {
		f(stage)
	}
}
