//go:build linux

package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeAgent answers each request on rw with script(request), which returns
// the raw lines to write.
func fakeAgent(t *testing.T, rw io.ReadWriteCloser, script func(Request) string) {
	t.Helper()
	go func() {
		defer rw.Close()
		r := bufio.NewReader(rw)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			var req Request
			if err := json.Unmarshal(line, &req); err != nil {
				t.Errorf("fake agent: bad request %q", line)
				return
			}
			if _, err := io.WriteString(rw, script(req)); err != nil {
				return
			}
		}
	}()
}

func TestClientSkipsStaleResponses(t *testing.T) {
	a, b := net.Pipe()
	fakeAgent(t, b, func(req Request) string {
		return "garbage from the console\n" +
			`{"v":1,"id":"stale-1","ok":true,"result":{"listeners":[{"proto":"tcp","address":"0.0.0.0","port":1,"pid":1,"process":"old"}]}}` + "\n" +
			`{"v":1,"id":"","ok":false,"error":"malformed request: x"}` + "\n" +
			fmt.Sprintf(`{"v":1,"id":%q,"ok":true,"result":{"listeners":[{"proto":"tcp6","address":"::","port":22,"pid":7,"process":"sshd"}]}}`, req.ID) + "\n"
	})
	c := NewConn(a)
	defer c.Close()
	for range 2 {
		ls, err := c.Ports(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if want := (Listener{"tcp6", "::", 22, 7, "sshd"}); len(ls) != 1 || ls[0] != want {
			t.Fatalf("got %+v, want [%+v]", ls, want)
		}
	}
}

func TestClientAgentError(t *testing.T) {
	a, b := net.Pipe()
	fakeAgent(t, b, func(req Request) string {
		return fmt.Sprintf(`{"v":1,"id":%q,"ok":false,"error":"boom"}`+"\n", req.ID)
	})
	c := NewConn(a)
	defer c.Close()
	_, err := c.Health(context.Background())
	if err == nil || err.Error() != "agent at pipe: health: agent error: boom" {
		t.Fatalf("err = %v", err)
	}
}

// TestClientDeadline: a call times out, and the late answer to it is skipped
// by the next call on the same Conn. (A buffered stream, as every real
// transport is: on a synchronous net.Pipe the late answer and the next
// request would block each other.)
func TestClientDeadline(t *testing.T) {
	fa, b := socketpair(t)
	a, err := net.FileConn(fa)
	fa.Close()
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	fakeAgent(t, b, func(req Request) string {
		calls++
		if calls == 1 {
			time.Sleep(300 * time.Millisecond)
		}
		return fmt.Sprintf(`{"v":1,"id":%q,"ok":true,"result":{"agent_version":"call%d","protocol":1}}`+"\n", req.ID, calls)
	})
	c := NewConn(a)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = c.Health(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), "agent: health: ") {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 250*time.Millisecond {
		t.Errorf("timed out after %v", d)
	}
	h, err := c.Health(context.Background())
	if err != nil || h.AgentVersion != "call2" {
		t.Fatalf("second call: %+v, %v", h, err)
	}
}

// TestClientCancelNoDeadlines: a stream without SetDeadline is closed when
// the context is cancelled.
func TestClientCancelNoDeadlines(t *testing.T) {
	pr, pw := io.Pipe() // nobody ever writes a response
	c := NewConn(struct {
		io.Reader
		io.Writer
		io.Closer
	}{pr, io.Discard, pr})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err := c.Ports(ctx)
	if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "agent: ports: ") {
		t.Fatalf("err = %v", err)
	}
	pw.Close()
}

func TestClientEOF(t *testing.T) {
	a, b := net.Pipe()
	go func() {
		bufio.NewReader(b).ReadBytes('\n')
		b.Close()
	}()
	c := NewConn(a)
	_, err := c.Health(context.Background())
	if err == nil || err.Error() != "agent at pipe: health: connection closed by the agent" {
		t.Fatalf("err = %v", err)
	}
}

// udsServer is a stand-in for Firecracker's vsock UDS: it accepts, reads the
// CONNECT line, and hands the line and the connection to handle.
func udsServer(t *testing.T, handle func(line string, c net.Conn, r *bufio.Reader)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "v.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				r := bufio.NewReader(c)
				line, err := r.ReadString('\n')
				if err != nil {
					c.Close()
					return
				}
				handle(line, c, r)
			}()
		}
	}()
	return path
}

func TestDialUDS(t *testing.T) {
	path := udsServer(t, func(line string, c net.Conn, r *bufio.Reader) {
		if line != "CONNECT 1024\n" {
			c.Close() // Firecracker drops connections to closed ports
			return
		}
		io.WriteString(c, "OK 1073741824\n")
		ServeStream(context.Background(), struct {
			io.Reader
			io.Writer
			io.Closer
		}{r, c, c})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := DialUDS(ctx, path, 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h, err := c.Health(ctx)
	if err != nil || h.Protocol != ProtocolVersion || h.AgentVersion != Version {
		t.Fatalf("health: %+v, %v", h, err)
	}
	if _, err := c.Ports(ctx); err != nil {
		t.Fatal(err)
	}

	_, err = DialUDS(ctx, path, 1025)
	want := fmt.Sprintf(`agent at %s: handshake: connection closed before "OK" (is the agent listening on vsock port 1025?)`, path)
	if err == nil || err.Error() != want {
		t.Errorf("wrong port: %v\nwant %s", err, want)
	}
}

func TestDialUDSGarbage(t *testing.T) {
	path := udsServer(t, func(line string, c net.Conn, r *bufio.Reader) {
		io.WriteString(c, "HTTP/1.1 400 Bad Request\r\n")
		time.Sleep(time.Second)
		c.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := DialUDS(ctx, path, 1024)
	want := fmt.Sprintf(`agent at %s: handshake: got "HTTP/1.1 400 Bad Request" want "OK <local port>"`, path)
	if err == nil || err.Error() != want {
		t.Errorf("err = %v\nwant %s", err, want)
	}
}

func TestDialUDSSilent(t *testing.T) {
	path := udsServer(t, func(line string, c net.Conn, r *bufio.Reader) {
		time.Sleep(2 * time.Second)
		c.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := DialUDS(ctx, path, 1024)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), "agent at "+path+": handshake: ") {
		t.Errorf("err = %v", err)
	}
}

func TestDialUDSMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.sock")
	_, err := DialUDS(context.Background(), path, 1024)
	if err == nil || !strings.HasPrefix(err.Error(), "agent at "+path+": dial unix") {
		t.Errorf("err = %v", err)
	}
}
