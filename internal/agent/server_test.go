//go:build linux

package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// rawClient speaks the protocol by hand, one line at a time.
type rawClient struct {
	t  *testing.T
	rw io.ReadWriter
	r  *bufio.Reader
}

func newRawClient(t *testing.T, rw io.ReadWriter) *rawClient {
	if d, ok := rw.(interface{ SetDeadline(time.Time) error }); ok {
		d.SetDeadline(time.Now().Add(20 * time.Second))
	}
	return &rawClient{t: t, rw: rw, r: bufio.NewReader(rw)}
}

// send writes raw (possibly several lines) and reads n responses.
func (c *rawClient) send(raw string, n int) []Response {
	c.t.Helper()
	if _, err := io.WriteString(c.rw, raw); err != nil {
		c.t.Fatalf("write: %v", err)
	}
	var out []Response
	for range n {
		line, err := c.r.ReadBytes('\n')
		if err != nil {
			c.t.Fatalf("read: %v", err)
		}
		var resp Response
		if err := json.Unmarshal(line, &resp); err != nil {
			c.t.Fatalf("bad response %q: %v", line, err)
		}
		if resp.V < minProtocol || resp.V > ProtocolVersion {
			c.t.Errorf("response v = %d: %s", resp.V, line)
		}
		out = append(out, resp)
	}
	return out
}

// protocolSuite runs the protocol checks against a served stream.
func protocolSuite(t *testing.T, rw io.ReadWriter) {
	c := newRawClient(t, rw)

	r := c.send(`{"v":1,"id":"h1","op":"health"}`+"\n", 1)[0]
	var h Health
	if !r.OK || r.ID != "h1" || json.Unmarshal(r.Result, &h) != nil || h.Protocol != ProtocolVersion || h.AgentVersion != Version || h.BootID == "" {
		t.Errorf("health: %+v (%s)", r, r.Result)
	}

	r = c.send(`{"v":1,"id":"p1","op":"ports"}`+"\n", 1)[0]
	var p PortsResult
	if !r.OK || r.ID != "p1" || json.Unmarshal(r.Result, &p) != nil || !strings.Contains(string(r.Result), `"listeners":[`) {
		t.Errorf("ports: %+v (%s)", r, r.Result)
	}

	r = c.send(`{"v":2,"id":"v2","op":"health"}`+"\n", 1)[0]
	if !r.OK || r.ID != "v2" || r.V != 2 {
		t.Errorf("health at v2: %+v", r)
	}
	r = c.send(`{"v":3,"id":"v3","op":"health"}`+"\n", 1)[0]
	if !r.OK || r.ID != "v3" || r.V != 3 {
		t.Errorf("health at v3: %+v", r)
	}
	r = c.send(`{"v":4,"id":"v4","op":"health"}`+"\n", 1)[0]
	if !r.OK || r.ID != "v4" || r.V != 4 {
		t.Errorf("health at v4: %+v", r)
	}
	r = c.send(`{"v":5,"id":"v5","op":"health"}`+"\n", 1)[0]
	if r.OK || r.ID != "v5" || r.Error != "unsupported protocol version 5 (this agent speaks 1 to 4)" || r.Result != nil || r.V != ProtocolVersion {
		t.Errorf("v5: %+v", r)
	}
	r = c.send(`{"v":1,"id":"r1","op":"refresh","args":{"time_unix_nano":1,"entropy":""}}`+"\n", 1)[0]
	if r.OK || r.Error != "op refresh needs protocol version 2" {
		t.Errorf("refresh at v1: %+v", r)
	}
	r = c.send(`{"v":2,"id":"r2","op":"refresh","args":{"time_unix_nano":1,"entropy":"AAAA"}}`+"\n", 1)[0]
	if r.OK || r.Error != "refresh: entropy must be 32-512 bytes, got 3" {
		t.Errorf("refresh with 3 bytes of entropy: %+v", r)
	}

	r = c.send(`{"v":2,"id":"i2","op":"identity","args":{}}`+"\n", 1)[0]
	if r.OK || r.Error != "op identity needs protocol version 3" {
		t.Errorf("identity at v2: %+v", r)
	}
	r = c.send(`{"v":3,"id":"i3","op":"identity","args":{"time_unix_nano":1}}`+"\n", 1)[0]
	if r.OK || r.Error != "identity: time_unix_nano: 1970-01-01T00:00:00Z is before 2024-01-01" {
		t.Errorf("identity with time 1: %+v", r)
	}

	r = c.send(`{"v":1,"id":"u1","op":"reboot"}`+"\n", 1)[0]
	if r.OK || r.ID != "u1" || r.Error != `unknown op "reboot" (known ops: health, ports, refresh, identity)` {
		t.Errorf("unknown op: %+v", r)
	}

	rs := c.send("{not json\n\n  \r\n"+`{"v":1,"id":"h2","op":"health"}`+"\r\n", 2)
	if rs[0].OK || rs[0].ID != "" || !strings.HasPrefix(rs[0].Error, "malformed request: ") {
		t.Errorf("malformed: %+v", rs[0])
	}
	if !rs[1].OK || rs[1].ID != "h2" {
		t.Errorf("request after a malformed line: %+v", rs[1])
	}

	rs = c.send(strings.Repeat("x", maxRequestLine+10)+"\n"+`{"v":1,"id":"h3","op":"health"}`+"\n", 2)
	if rs[0].OK || rs[0].ID != "" || !strings.Contains(rs[0].Error, "line longer than") {
		t.Errorf("oversized: %+v", rs[0])
	}
	if !rs[1].OK || rs[1].ID != "h3" {
		t.Errorf("request after an oversized line: %+v", rs[1])
	}
}

// serve runs ServeStream on one end in the background; the test ends it.
func serve(t *testing.T, rw io.ReadWriteCloser) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeStream(ctx, rw) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ServeStream: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("ServeStream did not return after cancel")
		}
	})
}

func TestServeStreamPipe(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	serve(t, b)
	protocolSuite(t, a)
}

func socketpair(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fds[0]), "sp0"), os.NewFile(uintptr(fds[1]), "sp1")
}

func TestServeStreamSocketpair(t *testing.T) {
	a, b := socketpair(t)
	defer a.Close()
	serve(t, b)
	protocolSuite(t, a)
}

func TestServeStreamEOF(t *testing.T) {
	a, b := socketpair(t)
	nc, err := net.FileConn(a)
	a.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	done := make(chan error, 1)
	go func() { done <- ServeStream(context.Background(), b) }()
	// A last request without "\n" before EOF is still answered.
	if _, err := io.WriteString(nc, `{"v":1,"id":"last","op":"health"}`); err != nil {
		t.Fatal(err)
	}
	if err := nc.(*net.UnixConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	out, err := io.ReadAll(nc)
	if err != nil || !strings.Contains(string(out), `"id":"last","ok":true`) {
		t.Errorf("got %q, %v", out, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("ServeStream after EOF: %v", err)
	}
}

// TestRunUnixListener serves through Run's --listen path and talks to it
// with the client and by hand.
func TestRunUnixListener(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	if err := os.WriteFile(sock, nil, 0o600); err != nil { // not a socket: must not be removed
		t.Fatal(err)
	}
	if _, err := Listen("unix:" + sock); err == nil {
		t.Fatal("Listen replaced a regular file")
	}
	os.Remove(sock)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		Run(ctx, Options{Listen: []string{"unix:" + sock}, Logf: t.Logf})
	}()
	var nc net.Conn
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if nc, err = net.Dial("unix", sock); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	protocolSuite(t, nc)

	// Several clients at once, through the host client.
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			nc, err := net.Dial("unix", sock)
			if err != nil {
				errs <- err
				return
			}
			c := NewConn(nc)
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := c.Health(ctx); err != nil {
				errs <- err
				return
			}
			_, err = c.Ports(ctx)
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}

	cancel()
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	// The open connection was closed too.
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := nc.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("read after shutdown: %v, want EOF", err)
	}
}

func TestServeTCP(t *testing.T) {
	l, err := Listen("tcp:127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, t.Logf) }()
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := NewConn(nc)
	ls, err := c.Ports(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	found := false
	for _, x := range ls {
		found = found || x.Proto == "tcp" && x.Port == port && x.PID == os.Getpid()
	}
	if !found {
		t.Errorf("agent's own listener %d not in %+v", port, ls)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

func TestParseListenAddr(t *testing.T) {
	for _, ok := range []string{"unix:/run/a.sock", "tcp:127.0.0.1:7000", "tcp::7000", "tcp:[::1]:7000"} {
		if _, _, err := ParseListenAddr(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "unix:", "/run/a.sock", "tcp:127.0.0.1", "udp:1.2.3.4:5", "vsock:3:1024"} {
		if _, _, err := ParseListenAddr(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
