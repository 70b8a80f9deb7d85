package fcvmm

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestAPIVsock(t *testing.T) {
	tv := newTestVMM(t)
	de := "An error occurred when deserializing the json body of a request: "
	sock := filepath.Join(tv.dir, "v.sock")
	put := func(body string) response { return tv.do(t, "PUT", "/vsock", body) }

	expect(t, "no guest_cid", put(`{"uds_path":"`+sock+`"}`), 400, de+"missing field `guest_cid`.")
	expect(t, "no uds_path", put(`{"guest_cid":3}`), 400, de+"missing field `uds_path`.")
	expect(t, "unknown field", put(`{"guest_cid":3,"uds_path":"`+sock+`","port":1}`), 400,
		de+"unknown field `port`, expected one of `vsock_id`, `guest_cid`, `uds_path`.")
	expect(t, "cid 2", put(`{"guest_cid":2,"uds_path":"`+sock+`"}`), 400, de+"guest_cid in body should be greater than or equal to 3.")
	expect(t, "cid -1", put(`{"guest_cid":-1,"uds_path":"`+sock+`"}`), 400, de+"invalid value: integer `-1`, expected u32.")
	expect(t, "cid 2^32", put(`{"guest_cid":4294967296,"uds_path":"`+sock+`"}`), 400, de+"invalid value: integer `4294967296`, expected u32.")
	expect(t, "cid string", put(`{"guest_cid":"3","uds_path":"`+sock+`"}`), 400, de+"invalid type…")
	if _, err := os.Lstat(sock); err == nil {
		t.Fatalf("a refused PUT /vsock bound %s", sock)
	}

	// Bound at PUT time, as in Firecracker.
	expect(t, "vsock", put(`{"guest_cid":3,"uds_path":"`+sock+`"}`), 204, "")
	if fi, err := os.Lstat(sock); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("uds_path after PUT: %v %v", fi, err)
	}
	r := tv.do(t, "GET", "/vm/config", "")
	var cfg map[string]json.RawMessage
	json.Unmarshal([]byte(r.body), &cfg)
	if got, want := string(cfg["vsock"]), `{"guest_cid":3,"uds_path":"`+sock+`"}`; got != want {
		t.Errorf("GET /vm/config vsock = %s, want %s", got, want)
	}

	// A repeat PUT removes the old socket and binds the new one; the
	// deprecated vsock_id is accepted with a Deprecation header.
	sock2 := filepath.Join(tv.dir, "v2.sock")
	r = put(`{"vsock_id":"vsock0","guest_cid":7,"uds_path":"` + sock2 + `"}`)
	expect(t, "vsock again", r, 204, "")
	if r.header.Get("Deprecation") != "true" {
		t.Errorf("vsock_id: Deprecation header %q", r.header.Get("Deprecation"))
	}
	if _, err := os.Lstat(sock); err == nil {
		t.Errorf("the old uds_path %s is still there", sock)
	}
	if _, err := os.Lstat(sock2); err != nil {
		t.Errorf("the new uds_path: %v", err)
	}
	if r := put(`{"guest_cid":7,"uds_path":"` + sock2 + `"}`); r.status != 204 || r.header.Get("Deprecation") != "" {
		t.Errorf("same path again: %d %q, Deprecation %q", r.status, r.body, r.header.Get("Deprecation"))
	}
	r = tv.do(t, "GET", "/vm/config", "")
	if !strings.Contains(r.body, `"vsock":{"guest_cid":7,"uds_path":"`+sock2+`"}`) {
		t.Errorf("GET /vm/config after the repeat PUT: %s", r.body)
	}

	// Anything but a stale socket at uds_path is refused.
	inUse := "Vsock config error: Cannot create backend for vsock device: Error binding to the host-side Unix socket: Address in use (os error 98)"
	file := writeFile(t, filepath.Join(tv.dir, "file"), nil)
	expect(t, "regular file", put(`{"guest_cid":3,"uds_path":"`+file+`"}`), 400, inUse)
	live := filepath.Join(tv.dir, "live.sock")
	ll, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer ll.Close()
	expect(t, "live socket", put(`{"guest_cid":3,"uds_path":"`+live+`"}`), 400, inUse)
	stale := filepath.Join(tv.dir, "stale.sock")
	sl, err := listenAPI(stale) // closed without unlinking: a dead VMM's socket
	if err != nil {
		t.Fatal(err)
	}
	sl.Close()
	expect(t, "stale socket", put(`{"guest_cid":3,"uds_path":"`+stale+`"}`), 204, "")
	expect(t, "no directory", put(`{"guest_cid":3,"uds_path":"`+filepath.Join(tv.dir, "nope", "v.sock")+`"}`), 400,
		"Vsock config error: Cannot create backend for vsock device: Error binding to the host-side Unix socket: No such file or directory (os error 2)")

	tv.v.mu.Lock()
	tv.v.started = true
	tv.v.mu.Unlock()
	expect(t, "post-boot", put(`{"guest_cid":3,"uds_path":"`+sock+`"}`), 400, "The requested operation is not supported after starting the microVM.")
}

func TestParseConnect(t *testing.T) {
	for in, want := range map[string]uint32{"CONNECT 1024": 1024, "connect 52": 52, "Connect\t7 extra": 7, "CONNECT +9": 9, "CONNECT 4294967295": 4294967295} {
		if got, err := parseConnect([]byte(in)); err != nil || got != want {
			t.Errorf("parseConnect(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "CONNECT", "CONNECT x", "CONNECT -1", "CONNECT 4294967296", "OPEN 1024", "CONNECT\xff 1"} {
		if _, err := parseConnect([]byte(in)); err == nil {
			t.Errorf("parseConnect(%q) accepted", in)
		}
	}
}

// bridgeRig is a vsock bridge on a temporary socket, with the test playing
// the guest on the other end of the "virtio-serial" socket pair.
type bridgeRig struct {
	b     *vsockBridge
	sock  string
	guest net.Conn
}

func newBridgeRig(t *testing.T, queueWait time.Duration) *bridgeRig {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "v.sock")
	ln, err := listenVsock(sock)
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs, err := socketPair("agent")
	if err != nil {
		t.Fatal(err)
	}
	guest, err := net.FileConn(theirs)
	theirs.Close()
	if err != nil {
		t.Fatal(err)
	}
	b := newVsockBridge(ln, mine, newLogger("test"))
	b.queueWait = queueWait
	b.start()
	t.Cleanup(func() { b.close(); guest.Close() })
	return &bridgeRig{b: b, sock: sock, guest: guest}
}

// dial connects to uds_path and sends a CONNECT line.
func (r *bridgeRig) dial(t *testing.T, request string) (net.Conn, *bufio.Reader) {
	t.Helper()
	return dialVsock(t, r.sock, request)
}

// readLine reads a line within d; "" and an error if the connection closed
// or nothing came.
func readLine(c net.Conn, br *bufio.Reader, d time.Duration) (string, error) {
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	return br.ReadString('\n')
}

// expectClosed checks that the bridge closed c without writing anything
// (a reset when it left part of the request unread).
func expectClosed(t *testing.T, what string, c net.Conn, br *bufio.Reader) {
	t.Helper()
	line, err := readLine(c, br, 5*time.Second)
	if line != "" || !(err == io.EOF || errors.Is(err, syscall.ECONNRESET)) {
		t.Errorf("%s: got %q, %v; want the connection closed without a word", what, line, err)
	}
}

func TestVsockBridge(t *testing.T) {
	r := newBridgeRig(t, 30*time.Second)
	guest := bufio.NewReader(r.guest)

	// The guest has not opened the port: like a vsock port nobody listens
	// on, the host connection is closed without OK.
	c, br := r.dial(t, "CONNECT 1024\n")
	expectClosed(t, "guest port closed", c, br)

	r.b.guestPort(true)
	for _, req := range []string{"CONNECT 5000\n", "HELLO 1024\n", "CONNECT\n", strings.Repeat("x", 40) + "\n"} {
		c, br := r.dial(t, req)
		expectClosed(t, strings.TrimSpace(req)[:min(12, len(strings.TrimSpace(req)))], c, br)
	}

	// Bytes the guest writes while no host connection is up are dropped.
	io.WriteString(r.guest, "stale\n")
	time.Sleep(100 * time.Millisecond)

	for i, wantPort := range []string{"OK 1073741824\n", "OK 1073741825\n"} {
		// The request and the first payload may come in one write.
		c, br := r.dial(t, "connect 1024\nping\n")
		if line, err := readLine(c, br, 5*time.Second); line != wantPort {
			t.Fatalf("connection %d: handshake %q, %v; want %q", i, line, err, wantPort)
		}
		r.guest.SetReadDeadline(time.Now().Add(5 * time.Second))
		if line, err := guest.ReadString('\n'); line != "ping\n" {
			t.Fatalf("connection %d: the guest read %q, %v", i, line, err)
		}
		io.WriteString(r.guest, "pong\n")
		if line, err := readLine(c, br, 5*time.Second); line != "pong\n" {
			t.Fatalf("connection %d: the host read %q, %v", i, line, err)
		}
		c.Close()
	}

	// One at a time: the second connection gets its OK once the first ends.
	c1, br1 := r.dial(t, "CONNECT 1024\n")
	if line, _ := readLine(c1, br1, 5*time.Second); !strings.HasPrefix(line, "OK ") {
		t.Fatalf("first: %q", line)
	}
	c2, br2 := r.dial(t, "CONNECT 1024\n")
	if line, err := readLine(c2, br2, 500*time.Millisecond); line != "" || !isTimeout(err) {
		t.Fatalf("second, while the first is open: %q, %v; want nothing yet", line, err)
	}
	c1.Close()
	if line, err := readLine(c2, br2, 5*time.Second); line != "OK 1073741827\n" {
		t.Fatalf("second, after the first closed: %q, %v", line, err)
	}

	// The guest closing its port ends the host connection.
	r.b.guestPort(false)
	expectClosed(t, "guest closed the port", c2, br2)
}

func TestVsockBridgeQueueWait(t *testing.T) {
	r := newBridgeRig(t, 300*time.Millisecond)
	r.b.guestPort(true)
	c1, br1 := r.dial(t, "CONNECT 1024\n")
	if line, _ := readLine(c1, br1, 5*time.Second); line != "OK 1073741824\n" {
		t.Fatalf("first: %q", line)
	}
	c2, br2 := r.dial(t, "CONNECT 1024\n")
	t0 := time.Now()
	expectClosed(t, "queued past the wait", c2, br2)
	if d := time.Since(t0); d > 3*time.Second {
		t.Errorf("the queued connection was closed after %v", d)
	}
	// The first is still carried.
	io.WriteString(r.guest, "still\n")
	if line, err := readLine(c1, br1, 5*time.Second); line != "still\n" {
		t.Errorf("first after the second expired: %q, %v", line, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
