package rpcserver

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/client"
	"github.com/banger-dev/banger/internal/safesock"
)

// startServer runs a real server on a real unix socket, with its limits
// changed by tune, and handlers "sleep" (params: milliseconds), "echo" and
// "big" (a 16 MiB result).
func startServer(t *testing.T, tune func(*Server)) (string, *Server) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := safesock.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	s := New(slog.New(slog.NewTextHandler(io.Discard, nil)), uint32(os.Geteuid()))
	if tune != nil {
		tune(s)
	}
	s.Handle("sleep", func(ctx context.Context, p json.RawMessage) (any, error) {
		var ms int
		if err := Decode(p, &ms); err != nil {
			return nil, err
		}
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return "slept", nil
	})
	s.Handle("echo", func(ctx context.Context, p json.RawMessage) (any, error) { return p, nil })
	s.Handle("big", func(ctx context.Context, p json.RawMessage) (any, error) { return strings.Repeat("x", 16<<20), nil })
	done := make(chan struct{})
	go func() { s.Serve(ln); close(done) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.Shutdown(ctx)
		<-done
	})
	return sock, s
}

func dialRaw(t *testing.T, sock string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedWithin reports whether the server closes c within d (reading and
// discarding whatever it sends first).
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// TestIdleConnectionClosed: a connection that sends nothing, or nothing
// after its last answer, is closed after the idle timeout.
func TestIdleConnectionClosed(t *testing.T) {
	sock, _ := startServer(t, func(s *Server) { s.idleTimeout = 200 * time.Millisecond })
	silent := dialRaw(t, sock)
	if !closedWithin(silent, 3*time.Second) {
		t.Error("a silent connection was not closed")
	}

	after := dialRaw(t, sock)
	fmt.Fprintf(after, `{"v":%d,"id":1,"method":"echo","params":1}`+"\n", api.ProtocolVersion)
	r := bufio.NewReader(after)
	if line, err := r.ReadString('\n'); err != nil || !strings.Contains(line, `"result":1`) {
		t.Fatalf("call before idling: %q, %v", line, err)
	}
	after.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("a connection idle after a call was not closed: %v", err)
	}
}

// TestPartialRequestTimeout: a request line that has begun must be done
// within the request timeout, however long the idle timeout is, so partial
// lines (up to 1 MiB each) are not held for minutes.
func TestPartialRequestTimeout(t *testing.T) {
	sock, _ := startServer(t, func(s *Server) {
		s.idleTimeout = time.Minute
		s.requestTimeout = 200 * time.Millisecond
	})
	c := dialRaw(t, sock)
	io.WriteString(c, `{"v":1,"id":1,"params":"`+strings.Repeat("x", 512<<10))
	start := time.Now()
	if !closedWithin(c, 3*time.Second) {
		t.Fatal("a connection holding a partial request was not closed")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("closed after %v", took)
	}
	// A slow but whole request still works.
	c = dialRaw(t, sock)
	io.WriteString(c, fmt.Sprintf(`{"v":%d,"id":1,`, api.ProtocolVersion))
	time.Sleep(50 * time.Millisecond)
	io.WriteString(c, `"method":"echo","params":2}`+"\n")
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || !strings.Contains(line, `"result":2`) {
		t.Fatalf("slow request: %q, %v", line, err)
	}
}

// TestLongCallOutlivesIdleTimeout: the idle timeout does not cut a call in
// flight, and a connection used again before it ends stays open.
func TestLongCallOutlivesIdleTimeout(t *testing.T) {
	sock, _ := startServer(t, func(s *Server) { s.idleTimeout = 150 * time.Millisecond })
	var got string
	if err := client.New(sock).Call(context.Background(), "sleep", 600, &got); err != nil || got != "slept" {
		t.Fatalf("a 600ms call under a 150ms idle timeout: %q, %v", got, err)
	}
	c := dialRaw(t, sock)
	r := bufio.NewReader(c)
	for i := range 3 {
		fmt.Fprintf(c, `{"v":%d,"id":%d,"method":"sleep","params":300}`+"\n", api.ProtocolVersion, i)
		if line, err := r.ReadString('\n'); err != nil || !strings.Contains(line, `"slept"`) {
			t.Fatalf("call %d on one connection: %q, %v", i, line, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestConnectionCap: past the most connections, a new one gets a one-line
// error and is closed; once one closes, calls work again.
func TestConnectionCap(t *testing.T) {
	sock, _ := startServer(t, func(s *Server) { s.maxConns = 4 })
	var held []net.Conn
	for range 4 {
		c := dialRaw(t, sock)
		fmt.Fprintf(c, `{"v":%d,"id":1,"method":"echo","params":1}`+"\n", api.ProtocolVersion)
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	err := client.New(sock).Call(context.Background(), "echo", 1, nil)
	if err == nil || !strings.Contains(err.Error(), "too many connections (4 open") {
		t.Fatalf("call past the cap: %v", err)
	}
	held[0].Close()
	deadline := time.Now().Add(3 * time.Second)
	for {
		err := client.New(sock).Call(context.Background(), "echo", 1, nil)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after closing one connection: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRequestLineLimit: a request line past MaxRequestBytes gets an error
// naming the limit and the connection is closed, without waiting for the
// rest; a large legitimate request still works.
func TestRequestLineLimit(t *testing.T) {
	sock, _ := startServer(t, nil)
	c := dialRaw(t, sock)
	go func() {
		c.Write([]byte(`{"v":1,"id":1,"method":"echo","params":"`))
		c.Write([]byte(strings.Repeat("x", MaxRequestBytes)))
		// no end of line, ever
	}()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if want := fmt.Sprintf("request larger than %d bytes", MaxRequestBytes); err != nil || !strings.Contains(line, want) {
		t.Fatalf("got %q, %v; want an error saying %q", line, err, want)
	}
	big := strings.Repeat("y", MaxRequestBytes/2)
	var got string
	if err := client.New(sock).Call(context.Background(), "echo", big, &got); err != nil || got != big {
		t.Fatalf("a %d-byte request: %v", len(big), err)
	}
}

// TestShutdownNotHeldByNonReader: a client that asks for a large answer and
// never reads it cannot hold shutdown past its grace period.
func TestShutdownNotHeldByNonReader(t *testing.T) {
	sock, s := startServer(t, nil)
	c := dialRaw(t, sock)
	fmt.Fprintf(c, `{"v":%d,"id":1,"method":"big"}`+"\n", api.ProtocolVersion)
	time.Sleep(300 * time.Millisecond) // the answer is being written, and blocks
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	s.Shutdown(ctx)
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Errorf("shutdown with a 200ms grace took %v", took)
	}
}

// TestWriteTimeoutFreesConnection: without a shutdown, the write timeout
// ends an answer nobody reads, so the call is no longer in flight and a
// later shutdown has nothing to wait for.
func TestWriteTimeoutFreesConnection(t *testing.T) {
	sock, s := startServer(t, func(s *Server) { s.writeTimeout = 200 * time.Millisecond })
	c := dialRaw(t, sock)
	fmt.Fprintf(c, `{"v":%d,"id":1,"method":"big"}`+"\n", api.ProtocolVersion)
	time.Sleep(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	s.Shutdown(ctx)
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("an answer nobody reads was still in flight: shutdown took %v", took)
	}
}
