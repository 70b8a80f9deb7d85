package guestssh

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// fixture is a client key, a known_hosts file and options to dial with.
type fixture struct {
	dir    string
	signer ssh.Signer
	kh     *KnownHosts
	opts   DialOptions
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	signer, _, err := EnsureKey(filepath.Join(dir, "ssh", "id_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	kh := OpenKnownHosts(filepath.Join(dir, "ssh", "known_hosts"))
	return &fixture{dir: dir, signer: signer, kh: kh, opts: DialOptions{Signer: signer, KnownHosts: kh, Timeout: 5 * time.Second}}
}

// serve starts a server with a fresh ed25519 host key on a free port and
// pins that key for its address, as banger does from a guest's console.
func (f *fixture) serve(t *testing.T) *testServer {
	t.Helper()
	hostKey := newEd25519Signer(t)
	srv := startServer(t, listenLocal(t, "127.0.0.1:0"), f.signer.PublicKey(), hostKey)
	if err := f.kh.Pin(srv.addr, hostKey.PublicKey()); err != nil {
		t.Fatal(err)
	}
	return srv
}

func (f *fixture) dial(t *testing.T, addr string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, addr, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func run(t *testing.T, c *Client, argv ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code, err := c.Run(ctx, argv, nil, &out, &errb)
	if err != nil {
		t.Fatalf("Run %q: %v", argv, err)
	}
	return code, out.String(), errb.String()
}

func TestRunExitCodes(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t, f.serve(t).addr)
	for _, want := range []int{0, 1, 42, 255} {
		if code, _, _ := run(t, c, "sh", "-c", fmt.Sprintf("exit %d", want)); code != want {
			t.Errorf("sh -c 'exit %d': got %d", want, code)
		}
	}
	if code, _, _ := run(t, c, "false"); code != 1 {
		t.Errorf("false: got %d", code)
	}
	if code, _, stderr := run(t, c, "no-such-command-banger"); code != 127 || stderr == "" {
		t.Errorf("missing command: got %d, stderr %q", code, stderr)
	}
}

func TestRunScriptExitCodes(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t, f.serve(t).addr)
	var out bytes.Buffer
	code, err := c.RunScript(context.Background(), "echo $((6*7)); exit 42", nil, &out, nil)
	if err != nil || code != 42 || out.String() != "42\n" {
		t.Fatalf("RunScript: code %d, err %v, out %q", code, err, out.String())
	}
}

func TestRunArgvRoundTrip(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t, f.serve(t).addr)
	words := []string{
		"", "plain", "two words", "it's", `"double"`, "$HOME", "${PATH}", "`id`", "$(id)",
		"a\nb", "trailing\n\n", "back\\slash", "*", "?", "~", "~root", "-n", "--", "a;b", "a|b",
		"a&b", "<in", ">out", "tab\there", "héllo", "!event", "#hash", "FOO=bar", "'", "''", `\'`,
		"{a,b}", "[x]", "%s", "%%",
	}
	for _, w := range words {
		code, out, stderr := run(t, c, "printf", "%s", w)
		if code != 0 || out != w {
			t.Errorf("printf %%s %q: code %d, got %q, stderr %q", w, code, out, stderr)
		}
	}
	// Whole argv at once, including an assignment-looking first word.
	code, out, _ := run(t, c, append([]string{"printf", "[%s]"}, words...)...)
	want := ""
	for _, w := range words {
		want += "[" + w + "]"
	}
	if code != 0 || out != want {
		t.Errorf("multi-word argv: got %q, want %q", out, want)
	}
	if code, _, _ := run(t, c, "FOO=bar"); code != 127 {
		t.Errorf("FOO=bar must run as a command name, got exit %d", code)
	}
}

func TestRunStdinStdoutStderr(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t, f.serve(t).addr)
	data := make([]byte, 1<<20)
	rand.Read(data)
	var out bytes.Buffer
	code, err := c.Run(context.Background(), []string{"cat"}, bytes.NewReader(data), &out, nil)
	if err != nil || code != 0 || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("cat: code %d, err %v, %d bytes back of %d", code, err, out.Len(), len(data))
	}
	var o, e bytes.Buffer
	code, err = c.Run(context.Background(), []string{"sh", "-c", "read x; echo out:$x; echo err:$x >&2; exit 3"},
		strings.NewReader("hello\n"), &o, &e)
	if err != nil || code != 3 || o.String() != "out:hello\n" || e.String() != "err:hello\n" {
		t.Fatalf("code %d, err %v, stdout %q, stderr %q", code, err, o.String(), e.String())
	}
}

func TestRunSignalExitCode(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t, f.serve(t).addr)
	// Through a nested shell (exit-status 143 or exit-signal TERM, depending
	// on whether the outer shell execs).
	if code, _, _ := run(t, c, "sh", "-c", "kill -TERM $$"); code != 143 {
		t.Errorf("sh -c 'kill -TERM $$': got %d, want 143", code)
	}
	// The session's own shell is killed: the server sends exit-signal.
	for sig, want := range map[string]int{"TERM": 143, "KILL": 137, "INT": 130, "SEGV": 139} {
		code, err := c.RunScript(context.Background(), "kill -"+sig+" $$", nil, nil, nil)
		if err != nil || code != want {
			t.Errorf("kill -%s: code %d, err %v, want %d", sig, code, err, want)
		}
	}
}

func TestRunContextCancel(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t, f.serve(t).addr)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	code, err := c.Run(ctx, []string{"sleep", "30"}, nil, nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) || code != -1 {
		t.Fatalf("got code %d, err %v", code, err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Run returned after %v", d)
	}
	// The connection is still usable.
	if code, _, _ := run(t, c, "true"); code != 0 {
		t.Fatalf("after cancel: %d", code)
	}
	// An already-cancelled context runs nothing.
	if _, err := c.Run(ctx, []string{"true"}, nil, nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("done ctx: %v", err)
	}
}

func TestRunCancelStopsWritingToCallerWriters(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t, f.serve(t).addr)
	// Return without waiting for the session to wind down, so only the
	// output gate keeps the session off out.
	defer func(g time.Duration) { cancelGrace = g }(cancelGrace)
	cancelGrace = 0
	var out bytes.Buffer // not synchronised: -race catches writes after return
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	// A stdin that never ends must not hold Run up either.
	pr, pw := io.Pipe()
	defer pw.Close()
	_, err := c.RunScript(ctx, "while :; do echo spam; done", pr, &out, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v", err)
	}
	n := out.Len()
	time.Sleep(200 * time.Millisecond)
	if out.Len() != n || n == 0 {
		t.Fatalf("output grew after Run returned (%d → %d) or never came", n, out.Len())
	}
}

func TestShellWithoutTerminal(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t, f.serve(t).addr)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() {
		io.WriteString(w, "echo hi from $0\nexit 7\n")
		w.Close()
	}()
	var out bytes.Buffer
	code, err := c.Shell(context.Background(), r, &out, io.Discard)
	if err != nil || code != 7 || !strings.HasPrefix(out.String(), "hi from") {
		t.Fatalf("code %d, err %v, out %q", code, err, out.String())
	}
}

// No trust on first use: a server whose key was never pinned is refused and
// nothing is written, however often it is dialled. Before console pinning,
// Dial pinned whatever answered first.
func TestUnpinnedHostIsRefused(t *testing.T) {
	f := newFixture(t)
	srv := startServer(t, listenLocal(t, "127.0.0.1:0"), f.signer.PublicKey(), newEd25519Signer(t))
	c, err := Dial(context.Background(), srv.addr, f.opts)
	if err == nil {
		c.Close()
		t.Fatal("Dial accepted a host key that was never pinned (trust on first use)")
	}
	var unknown *HostKeyUnknownError
	if !errors.As(err, &unknown) || !errors.Is(err, ErrHostKeyNotPinned) || unknown.Host != knownhosts.Normalize(srv.addr) {
		t.Fatalf("want *HostKeyUnknownError for %s, got %v", srv.addr, err)
	}
	if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "banger vm restart") {
		t.Fatalf("bad error: %q", msg)
	}
	if _, err := os.Stat(f.kh.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("known_hosts written by a refused dial: %v", err)
	}
	// WaitReady gives up at once: no pin will appear by retrying.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	before := srv.accepted.Load()
	if _, err := WaitReady(ctx, srv.addr, f.opts, 20*time.Millisecond); !errors.As(err, &unknown) {
		t.Fatalf("WaitReady: %v", err)
	}
	if n := srv.accepted.Load() - before; n != 1 {
		t.Fatalf("WaitReady dialled %d times, want 1", n)
	}
	if _, err := os.Stat(f.kh.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("known_hosts written by a refused dial: %v", err)
	}
}

// The guest's console announced its keys; an imposter (another guest on the
// bridge) answers on the address first: it is refused, the pin is untouched,
// and the real guest is accepted afterwards.
func TestPinFromConsoleRefusesImposter(t *testing.T) {
	f := newFixture(t)
	guestEd, guestEC, imposterKey := newEd25519Signer(t), newECDSASigner(t), newEd25519Signer(t)
	console := "[    0.000000] Linux version 6.1.0\r\n" +
		ConsoleHostKeyMarker + authLine(guestEd.PublicKey()) + " root@guest\r\n" +
		ConsoleHostKeyMarker + authLine(guestEC.PublicKey()) + "\r\n" +
		"BANGER-READY boot_id=00000000-0000-0000-0000-000000000000\r\n"
	keys, ready, err := ConsoleHostKeys([]byte(console))
	if err != nil || !ready || len(keys) != 2 {
		t.Fatalf("ConsoleHostKeys: %d keys, ready %v, %v", len(keys), ready, err)
	}
	ln := listenLocal(t, "127.0.0.1:0")
	addr := ln.Addr().String()
	if err := f.kh.Pin(addr, keys...); err != nil {
		t.Fatal(err)
	}
	pinned, _ := os.ReadFile(f.kh.Path())

	imposter := startServer(t, ln, f.signer.PublicKey(), imposterKey)
	_, err = Dial(context.Background(), addr, f.opts)
	var mm *HostKeyMismatchError
	if !errors.As(err, &mm) || !keysEqual(mm.Got, imposterKey.PublicKey()) {
		t.Fatalf("imposter: want *HostKeyMismatchError, got %v", err)
	}
	// An imposter with an ECDSA key is refused too (no downgrade to a type
	// the guest did not announce).
	imposter.Close()
	if after, _ := os.ReadFile(f.kh.Path()); !bytes.Equal(after, pinned) {
		t.Fatalf("known_hosts changed by the imposter:\n%s", after)
	}
	ecImposter := startServer(t, listenLocal(t, addr), f.signer.PublicKey(), newECDSASigner(t))
	if _, err := Dial(context.Background(), addr, f.opts); !errors.As(err, &mm) {
		t.Fatalf("ecdsa imposter: want *HostKeyMismatchError, got %v", err)
	}
	ecImposter.Close()

	startServer(t, listenLocal(t, addr), f.signer.PublicKey(), guestEd, guestEC)
	c := f.dial(t, addr)
	if code, _, _ := run(t, c, "true"); code != 0 {
		t.Fatal("run failed")
	}
	if after, _ := os.ReadFile(f.kh.Path()); !bytes.Equal(after, pinned) {
		t.Fatalf("known_hosts changed by a dial:\n%s", after)
	}
}

func TestPinnedKeyRefusesChangedKey(t *testing.T) {
	f := newFixture(t)
	srv := f.serve(t)
	addr := srv.addr
	c := f.dial(t, addr)
	if code, _, _ := run(t, c, "true"); code != 0 {
		t.Fatal("run failed")
	}
	c.Close()
	pinned, err := os.ReadFile(f.kh.Path())
	if err != nil {
		t.Fatal(err)
	}
	host := knownhosts.Normalize(addr)
	if lines := strings.Split(strings.TrimSpace(string(pinned)), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], host+" ssh-ed25519 ") {
		t.Fatalf("known_hosts after Pin:\n%s", pinned)
	}
	// Same server again: accepted, nothing written.
	f.dial(t, addr).Close()
	if again, _ := os.ReadFile(f.kh.Path()); !bytes.Equal(again, pinned) {
		t.Fatalf("known_hosts changed on second dial:\n%s", again)
	}

	// A different server (new host key) on the same address.
	srv.Close()
	newKey := newEd25519Signer(t)
	imposter := startServer(t, listenLocal(t, addr), f.signer.PublicKey(), newKey)
	_, err = Dial(context.Background(), addr, f.opts)
	var mm *HostKeyMismatchError
	if !errors.As(err, &mm) {
		t.Fatalf("want *HostKeyMismatchError, got %v", err)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || !strings.Contains(msg, host) || !strings.Contains(msg, "man-in-the-middle") || mm.Line != 1 {
		t.Fatalf("bad mismatch error (line %d): %q", mm.Line, msg)
	}
	t.Log(msg)
	if after, _ := os.ReadFile(f.kh.Path()); !bytes.Equal(after, pinned) {
		t.Fatalf("known_hosts changed by a mismatch:\n%s", after)
	}

	// WaitReady gives up at once on a mismatch.
	before := imposter.accepted.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err = WaitReady(ctx, addr, f.opts, 20*time.Millisecond)
	if !errors.As(err, &mm) {
		t.Fatalf("WaitReady: want mismatch, got %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("WaitReady took %v on a mismatch", d)
	}
	if n := imposter.accepted.Load() - before; n != 1 {
		t.Fatalf("WaitReady dialled %d times, want 1", n)
	}

	// After Remove (what vm delete does) the address has no pin: refused,
	// not pinned from the network.
	if err := f.kh.Remove(addr); err != nil {
		t.Fatal(err)
	}
	var unknown *HostKeyUnknownError
	if _, err := Dial(context.Background(), addr, f.opts); !errors.As(err, &unknown) {
		t.Fatalf("after Remove: want *HostKeyUnknownError, got %v", err)
	}
	// A new pin (the next boot's console) is accepted.
	if err := f.kh.Pin(addr, newKey.PublicKey()); err != nil {
		t.Fatal(err)
	}
	f.dial(t, addr).Close()
}

func TestCustomDialChecksLogicalAddress(t *testing.T) {
	f := newFixture(t)
	a := f.serve(t)
	b := f.serve(t)
	via := func(real string) DialOptions {
		o := f.opts
		o.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, real)
		}
		return o
	}
	// The pin for a's real address does not cover the logical one.
	var unknown *HostKeyUnknownError
	if _, err := Dial(context.Background(), "172.30.0.5", via(a.addr)); !errors.As(err, &unknown) || unknown.Host != "172.30.0.5" {
		t.Fatalf("want *HostKeyUnknownError for 172.30.0.5, got %v", err)
	}
	if err := f.kh.Pin("172.30.0.5", a.hostKeys[0]); err != nil {
		t.Fatal(err)
	}
	c, err := Dial(context.Background(), "172.30.0.5", via(a.addr))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	_, err = Dial(context.Background(), "172.30.0.5:22", via(b.addr))
	var mm *HostKeyMismatchError
	if !errors.As(err, &mm) || !strings.Contains(err.Error(), "host key for 172.30.0.5 changed") {
		t.Fatalf("want mismatch for 172.30.0.5, got %v", err)
	}
}

func TestDialPrefersPinnedKeyType(t *testing.T) {
	f := newFixture(t)
	ed, ec := newEd25519Signer(t), newECDSASigner(t)
	srv := startServer(t, listenLocal(t, "127.0.0.1:0"), f.signer.PublicKey(), ed, ec)
	// Pin one of the server's keys, as an ssh client preferring that type
	// might have: Dial must ask for that type, whatever its own preference.
	for _, pinned := range []ssh.Signer{ed, ec} {
		line := knownhosts.Line([]string{srv.addr}, pinned.PublicKey()) + "\n"
		if err := os.WriteFile(f.kh.Path(), []byte(line), 0o600); err != nil {
			t.Fatal(err)
		}
		f.dial(t, srv.addr).Close()
		if data, _ := os.ReadFile(f.kh.Path()); string(data) != line {
			t.Fatalf("known_hosts changed:\n%s", data)
		}
	}
}

func TestWaitReadyServerStartsLate(t *testing.T) {
	f := newFixture(t)
	ln := listenLocal(t, "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	hostKey := newEd25519Signer(t)
	if err := f.kh.Pin(addr, hostKey.PublicKey()); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(400 * time.Millisecond)
		startServer(t, listenLocal(t, addr), f.signer.PublicKey(), hostKey)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := WaitReady(ctx, addr, f.opts, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if code, _, _ := run(t, c, "true"); code != 0 {
		t.Fatal("run failed")
	}
}

func TestWaitReadyTimeoutWrapsLastError(t *testing.T) {
	f := newFixture(t)
	ln := listenLocal(t, "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := WaitReady(ctx, addr, f.opts, 50*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("got %v", err)
	}
}

func TestDialHandshakeBoundedByTimeout(t *testing.T) {
	f := newFixture(t)
	// Accepts TCP but never speaks SSH, like a guest mid-boot.
	ln := listenLocal(t, "127.0.0.1:0")
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	o := f.opts
	o.Timeout = 300 * time.Millisecond
	start := time.Now()
	if _, err := Dial(context.Background(), ln.Addr().String(), o); err == nil {
		t.Fatal("dial succeeded")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Dial took %v", d)
	}
}

func TestDialErrors(t *testing.T) {
	f := newFixture(t)
	srv := f.serve(t)
	if _, err := Dial(context.Background(), srv.addr, DialOptions{KnownHosts: f.kh}); !errors.Is(err, ErrBadOptions) {
		t.Errorf("no signer: %v", err)
	}
	_, err := WaitReady(context.Background(), srv.addr, DialOptions{Signer: f.signer}, time.Millisecond)
	if !errors.Is(err, ErrBadOptions) {
		t.Errorf("WaitReady without known hosts: %v", err)
	}
	// A key the server does not trust fails authentication.
	o := f.opts
	o.Signer = newEd25519Signer(t)
	if _, err := Dial(context.Background(), srv.addr, o); err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Errorf("wrong key: %v", err)
	}
}
