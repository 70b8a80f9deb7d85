package guestssh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// DefaultTimeout bounds one Dial (TCP connect plus SSH handshake) when
// DialOptions.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// cancelGrace is how long Run waits, after ctx ends, for the remote side to
// acknowledge the closed session before returning anyway. A variable for tests.
var cancelGrace = 2 * time.Second

// ErrBadOptions is wrapped by Dial errors caused by the options themselves;
// WaitReady does not retry them.
var ErrBadOptions = errors.New("invalid dial options")

// DialOptions configures Dial and WaitReady.
type DialOptions struct {
	User       string        // remote user; "root" if empty
	Signer     ssh.Signer    // client key (EnsureKey); required
	KnownHosts *KnownHosts   // host key pinning; required
	Timeout    time.Duration // bound on one dial + handshake; DefaultTimeout if zero
	// Dial opens the transport; net.Dialer.DialContext if nil. The host key
	// is pinned under the addr given to Dial, whatever Dial connects to.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Client is an SSH connection to a guest. It is safe for concurrent use; each
// Run opens its own session.
type Client struct {
	ssh  *ssh.Client
	addr string
}

// Dial connects to addr ("host" or "host:port"; port 22 by default) and
// authenticates with o.Signer, accepting only a host key pinned for addr in
// o.KnownHosts (KnownHosts.Pin; there is no trust on first use). A host
// without a pin fails with a *HostKeyUnknownError, a key other than the
// pinned ones with a *HostKeyMismatchError (both returned unwrapped). The
// whole dial is bounded by ctx and o.Timeout.
func Dial(ctx context.Context, addr string, o DialOptions) (*Client, error) {
	if o.Signer == nil {
		return nil, fmt.Errorf("guestssh: dial %s: %w: no Signer", addr, ErrBadOptions)
	}
	if o.KnownHosts == nil {
		return nil, fmt.Errorf("guestssh: dial %s: %w: no KnownHosts", addr, ErrBadOptions)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(splitHostPortDefault(addr), "22")
	}
	user := o.User
	if user == "" {
		user = "root"
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	algos, err := o.KnownHosts.hostKeyAlgorithms(knownhosts.Normalize(addr))
	if err != nil {
		return nil, err
	}

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dial := o.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	conn, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("guestssh: dial %s: %w", addr, err)
	}
	// ssh.NewClientConn knows no context: bound the handshake by the
	// deadline and by closing the connection if ctx ends first.
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	cfg := &ssh.ClientConfig{
		User:              user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(o.Signer)},
		HostKeyCallback:   o.KnownHosts.Callback(),
		HostKeyAlgorithms: algos,
		Timeout:           timeout,
	}
	cfg.Ciphers = preferredCiphers
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	interrupted := !stop()
	if err != nil {
		var mismatch *HostKeyMismatchError
		if errors.As(err, &mismatch) {
			return nil, mismatch
		}
		var unknown *HostKeyUnknownError
		if errors.As(err, &unknown) {
			return nil, unknown
		}
		if interrupted && ctx.Err() != nil {
			return nil, fmt.Errorf("guestssh: ssh handshake with %s: %w (%w)", addr, ctx.Err(), err)
		}
		return nil, fmt.Errorf("guestssh: ssh handshake with %s: %w", addr, err)
	}
	if interrupted {
		c.Close()
		return nil, fmt.Errorf("guestssh: ssh handshake with %s: %w", addr, ctx.Err())
	}
	conn.SetDeadline(time.Time{})
	return &Client{ssh: ssh.NewClient(c, chans, reqs), addr: addr}, nil
}

func splitHostPortDefault(addr string) string {
	h, _ := splitHostPort(addr)
	return h
}

// WaitReady dials addr every interval (500ms if every <= 0) until a dial
// succeeds or ctx ends; then it returns an error wrapping both ctx's error and
// the last dial error. A host key mismatch, a host without a pinned key, a
// revoked host key and bad options are returned at once, not retried.
func WaitReady(ctx context.Context, addr string, o DialOptions, every time.Duration) (*Client, error) {
	if every <= 0 {
		every = 500 * time.Millisecond
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	var lastErr error
	for {
		select {
		case <-ctx.Done():
			if lastErr == nil {
				return nil, fmt.Errorf("guestssh: waiting for ssh on %s: %w", addr, ctx.Err())
			}
			return nil, fmt.Errorf("guestssh: waiting for ssh on %s: %w (last error: %w)", addr, ctx.Err(), lastErr)
		case <-timer.C:
		}
		c, err := Dial(ctx, addr, o)
		if err == nil {
			return c, nil
		}
		var mismatch *HostKeyMismatchError
		if errors.As(err, &mismatch) || errors.Is(err, ErrHostKeyNotPinned) || errors.Is(err, ErrHostKeyRevoked) || errors.Is(err, ErrBadOptions) {
			return nil, err
		}
		lastErr = err
		timer.Reset(every)
	}
}

// Addr is the "host:port" the client dialled.
func (c *Client) Addr() string { return c.addr }

// Close closes the connection.
func (c *Client) Close() error { return c.ssh.Close() }

// Run runs argv in the guest, quoted for the remote shell with ShellQuote, so
// the program receives argv exactly. stdin (may be nil) is streamed and closed
// at EOF; stdout and stderr may be nil (discarded).
//
// A command that ran yields its exit status and a nil error; one killed by
// signal N yields 128+N. err is non-nil only when the status is unknown:
// the session failed, or the connection dropped, or ctx ended. When ctx ends,
// the remote command is sent SIGTERM, the session is closed, and Run returns
// ctx's error promptly; nothing is written to stdout or stderr after Run
// returns. A stdin that never reaches EOF may be read once more after Run
// returns (by a goroutine left blocked in its Read).
func (c *Client) Run(ctx context.Context, argv []string, stdin io.Reader, stdout, stderr io.Writer) (exitCode int, err error) {
	if len(argv) == 0 {
		return -1, errors.New("guestssh: run: empty argv")
	}
	return c.RunScript(ctx, ShellQuote(argv), stdin, stdout, stderr)
}

// RunScript runs script, a raw command line for the remote user's shell (no
// quoting is added), with Run's I/O and exit-status semantics.
func (c *Client) RunScript(ctx context.Context, script string, stdin io.Reader, stdout, stderr io.Writer) (exitCode int, err error) {
	return c.session(ctx, stdin, stdout, stderr, func(s *ssh.Session) error { return s.Start(script) })
}

// session runs one session started by start and waits for it under ctx.
func (c *Client) session(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer, start func(*ssh.Session) error) (int, error) {
	if err := ctx.Err(); err != nil {
		return -1, err
	}
	var outW, errW *gatedWriter
	if stdout != nil {
		outW = &gatedWriter{w: stdout}
	}
	if stderr != nil {
		errW = &gatedWriter{w: stderr}
	}

	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	var (
		mu       sync.Mutex
		sess     *ssh.Session
		canceled bool
	)
	go func() {
		s, err := c.ssh.NewSession()
		if err != nil {
			done <- result{-1, fmt.Errorf("guestssh: open session on %s: %w", c.addr, err)}
			return
		}
		defer s.Close()
		mu.Lock()
		if canceled {
			mu.Unlock()
			done <- result{-1, context.Canceled}
			return
		}
		sess = s
		mu.Unlock()
		s.Stdin = stdin
		if outW != nil {
			s.Stdout = outW
		}
		if errW != nil {
			s.Stderr = errW
		}
		if err := start(s); err != nil {
			done <- result{-1, fmt.Errorf("guestssh: start on %s: %w", c.addr, err)}
			return
		}
		code, err := exitResult(s.Wait())
		if err != nil {
			err = fmt.Errorf("guestssh: on %s: %w", c.addr, err)
		}
		done <- result{code, err}
	}()

	stopKA := make(chan struct{})
	defer close(stopKA)
	go c.keepAlive(stopKA)
	select {
	case r := <-done:
		return r.code, r.err
	case <-ctx.Done():
	}
	mu.Lock()
	canceled = true
	s := sess
	mu.Unlock()
	if s != nil {
		// Writes can block on a wedged connection; don't wait on them.
		go func() {
			s.Signal(ssh.SIGTERM)
			s.Close()
		}()
	}
	select {
	case <-done:
	case <-time.After(cancelGrace):
	}
	if outW != nil {
		outW.shut()
	}
	if errW != nil {
		errW.shut()
	}
	return -1, ctx.Err()
}

// Keep-alive: a guest that vanishes (rebooted, VMM killed) sends no FIN or
// RST, so without probes a session would wait for TCP's own timeout.
var (
	KeepAliveInterval = 5 * time.Second
	KeepAliveTimeout  = 15 * time.Second
)

// keepAlive probes the server until stop closes; an unanswered probe closes
// the connection, which ends the session with a "connection lost" error.
func (c *Client) keepAlive(stop <-chan struct{}) {
	t := time.NewTicker(KeepAliveInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		replied := make(chan error, 1)
		go func() {
			_, _, err := c.ssh.SendRequest("keepalive@openssh.com", true, nil)
			replied <- err
		}()
		select {
		case <-stop:
			return
		case err := <-replied:
			if err != nil {
				c.ssh.Close()
				return
			}
		case <-time.After(KeepAliveTimeout):
			c.ssh.Close()
			return
		}
	}
}

// exitResult maps Session.Wait's error to an exit code.
func exitResult(err error) (int, error) {
	if err == nil {
		return 0, nil
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		if sig := ee.Signal(); sig != "" {
			return 128 + signalNumber(sig), nil
		}
		return ee.ExitStatus(), nil
	}
	var missing *ssh.ExitMissingError
	if errors.As(err, &missing) {
		return -1, errors.New("remote command ended without an exit status (connection lost?)")
	}
	return -1, err
}

// linuxSignals numbers the signal names a guest can report (RFC 4254 names,
// without "SIG"), with Linux x86-64/arm64 numbering.
var linuxSignals = map[string]int{
	"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "BUS": 7,
	"FPE": 8, "KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13,
	"ALRM": 14, "TERM": 15, "STKFLT": 16, "CHLD": 17, "CONT": 18, "STOP": 19,
	"TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "XCPU": 24, "XFSZ": 25,
	"VTALRM": 26, "PROF": 27, "WINCH": 28, "IO": 29, "PWR": 30, "SYS": 31,
}

// signalNumber numbers a signal name ("TERM", "SIGTERM", "TERM@openssh.com");
// unknown names give 127, so the exit code is 255.
func signalNumber(name string) int {
	name, _, _ = strings.Cut(name, "@")
	name = strings.TrimPrefix(name, "SIG")
	if n, ok := linuxSignals[name]; ok {
		return n
	}
	return 127
}

// gatedWriter forwards writes until shut, after which writes fail, so a
// session abandoned on cancellation cannot touch the caller's writers.
type gatedWriter struct {
	mu     sync.Mutex
	w      io.Writer
	closed bool
}

var errRunReturned = errors.New("guestssh: output after Run returned")

func (g *gatedWriter) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return 0, errRunReturned
	}
	return g.w.Write(p)
}

func (g *gatedWriter) shut() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// preferredCiphers put AES-GCM first: under QEMU's TCG the guest decrypts it
// fastest (200 MB: 16.4 s, chacha20-poly1305 17.6 s, x/crypto's default
// choice 20.9 s, aes128-ctr 20.9 s, measured into a debian-bookworm guest).
// Negotiation takes the first one the guest's server also has.
var preferredCiphers = []string{
	"aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com",
	"aes128-ctr", "aes192-ctr", "aes256-ctr",
}
