package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// handle answers one request line. It never fails: every problem becomes an
// error response.
func handle(line []byte) Response {
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		return Response{V: ProtocolVersion, Error: "malformed request: " + jsonErr(err)}
	}
	resp := Response{V: req.V, ID: req.ID}
	if req.V < minProtocol || req.V > ProtocolVersion {
		resp.V = ProtocolVersion
		resp.Error = fmt.Sprintf("unsupported protocol version %d (this agent speaks %d to %d)", req.V, minProtocol, ProtocolVersion)
		return resp
	}
	var (
		result any
		err    error
	)
	switch req.Op {
	case OpHealth:
		result, err = CollectHealth()
	case OpPorts:
		var ls []Listener
		if ls, err = CollectPorts(); err == nil {
			result, err = portsResult(ls)
		}
	case OpRefresh:
		if req.V < refreshProtocol {
			err = fmt.Errorf("op %s needs protocol version %d", OpRefresh, refreshProtocol)
			break
		}
		var a RefreshArgs
		if err = json.Unmarshal(req.Args, &a); err != nil {
			err = fmt.Errorf("refresh: bad args: %s", jsonErr(err))
			break
		}
		result, err = refresh(a)
	case OpIdentity:
		if req.V < identityProtocol {
			err = fmt.Errorf("op %s needs protocol version %d", OpIdentity, identityProtocol)
			break
		}
		var a IdentityArgs
		if err = decodeStrict(req.Args, &a); err != nil {
			err = fmt.Errorf("identity: bad args: %s", jsonErr(err))
			break
		}
		if len(a.HostKeys) > 0 && req.V < identityKeysProtocol {
			err = fmt.Errorf("identity: host_keys needs protocol version %d", identityKeysProtocol)
			break
		}
		result, err = identity(a)
	default:
		err = fmt.Errorf("unknown op %q (known ops: %s)", req.Op, knownOps)
	}
	if err == nil {
		resp.Result, err = json.Marshal(result)
	}
	if err != nil {
		resp.Error = err.Error()
		resp.Result = nil
		return resp
	}
	resp.OK = true
	return resp
}

// portsResult is the answer to ports. Past MaxListeners it is an error
// naming the count, which the host shows as is; a longer list would be
// refused by the host anyway.
func portsResult(ls []Listener) (PortsResult, error) {
	if len(ls) > MaxListeners {
		return PortsResult{}, fmt.Errorf("the guest has %d listening sockets, more than the %d banger lists", len(ls), MaxListeners)
	}
	return PortsResult{Listeners: ls}, nil
}

// decodeStrict decodes the args (one JSON value, checked by the Request's
// decoding) into v, refusing fields v does not have: a newer host's field
// that this agent would silently skip.
func decodeStrict(b []byte, v any) error {
	if len(b) == 0 {
		return errors.New("no args")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

func jsonErr(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("%v (at byte %d)", se, se.Offset)
	}
	return err.Error()
}

// ServeStream serves the protocol on one byte stream until reading from it
// fails or ctx is done, and then closes it. Requests are answered in order.
// Malformed or oversized lines get an error response with an empty id; blank
// lines are ignored. It returns nil on EOF or cancellation, else the I/O error.
func ServeStream(ctx context.Context, rw io.ReadWriteCloser) error {
	defer rw.Close()
	stop := context.AfterFunc(ctx, func() { rw.Close() })
	defer stop()
	r := bufio.NewReaderSize(rw, 4096)
	for {
		line, err := readLine(r, maxRequestLine)
		var resp Response
		switch {
		case errors.Is(err, errLineTooLong):
			resp = Response{V: ProtocolVersion, Error: fmt.Sprintf("malformed request: line longer than %d bytes", maxRequestLine)}
		case err != nil:
			if ctx.Err() != nil || errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case len(strings.TrimSpace(string(line))) == 0:
			continue
		default:
			resp = handle(line)
		}
		out, err := json.Marshal(resp)
		if err != nil { // cannot happen: every field marshals
			return err
		}
		if _, err := rw.Write(append(out, '\n')); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// Serve accepts connections on l and serves each with [ServeStream] in its
// own goroutine, until ctx is done (it then closes l and the connections and
// returns nil) or accepting fails for good.
func Serve(ctx context.Context, l net.Listener, logf func(string, ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	backoff := 5 * time.Millisecond
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// EMFILE and friends: wait and retry, as net/http does.
			logf("%s: accept: %v", l.Addr(), err)
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := ServeStream(ctx, c); err != nil {
				logf("%s: %v", l.Addr(), err)
			}
		}()
	}
}

// Listen opens a debugging/test listener: "unix:/path" (a stale socket file
// at path is replaced) or "tcp:HOST:PORT".
func Listen(addr string) (net.Listener, error) {
	network, a, err := ParseListenAddr(addr)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		if fi, err := os.Lstat(a); err == nil && fi.Mode().Type() == fs.ModeSocket {
			os.Remove(a)
		}
	}
	return net.Listen(network, a)
}

// ParseListenAddr splits a --listen address into network and address.
func ParseListenAddr(addr string) (network, address string, err error) {
	network, address, ok := strings.Cut(addr, ":")
	switch {
	case !ok || address == "":
	case network == "unix":
		return network, address, nil
	case network == "tcp":
		if _, _, err := net.SplitHostPort(address); err != nil {
			return "", "", fmt.Errorf("listen address %q: %v", addr, err)
		}
		return network, address, nil
	}
	return "", "", fmt.Errorf("listen address %q: want unix:/path or tcp:HOST:PORT", addr)
}
