package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Conn is a client for one agent stream. Calls are serialized; each carries a
// random id and the client skips response lines with other ids (stale answers
// to earlier clients on a shared serial stream, or to a call of this Conn
// that timed out). A Conn is safe for concurrent use.
//
// The guest is untrusted, so a Conn reads at most 1 MiB per line: a longer
// (or endless) line fails the call at once and closes the stream.
type Conn struct {
	name string // "agent at <where>", the prefix of every error
	rw   io.ReadWriteCloser
	r    *bufio.Reader

	mu sync.Mutex
}

// NewConn returns a client speaking the protocol over rw, which the Conn
// owns. Context deadlines and cancellation are applied with SetDeadline when
// rw has it (net.Conn, pollable *os.File); otherwise cancelling a call closes
// rw.
func NewConn(rw io.ReadWriteCloser) *Conn {
	name := "agent"
	if c, ok := rw.(net.Conn); ok && c.RemoteAddr() != nil {
		// Unnamed unix sockets (socketpairs, clients) print as "" or "@".
		if a := c.RemoteAddr().String(); a != "" && a != "@" {
			name = "agent at " + a
		}
	}
	return newConn(name, rw, bufio.NewReader(rw))
}

func newConn(name string, rw io.ReadWriteCloser, r *bufio.Reader) *Conn {
	return &Conn{name: name, rw: rw, r: r}
}

// DialUDS connects to the agent through a Firecracker-style vsock UDS (the
// VMM's vsock uds_path): it writes "CONNECT <port>\n", expects "OK <n>\n" back
// (Firecracker's host-initiated vsock handshake), and then speaks the agent
// protocol on the stream.
func DialUDS(ctx context.Context, udsPath string, port uint32) (*Conn, error) {
	name := "agent at " + udsPath
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", udsPath)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	c := newConn(name, nc, bufio.NewReader(nc))
	if err := c.handshake(ctx, port); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

func (c *Conn) handshake(ctx context.Context, port uint32) error {
	stop := c.watch(ctx)
	defer stop()
	if _, err := fmt.Fprintf(c.rw, "CONNECT %d\n", port); err != nil {
		return c.ioErr(ctx, "handshake", err)
	}
	line, err := readLineLimit(c.r, 256)
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: handshake: connection closed before \"OK\" (is the agent listening on vsock port %d?)", c.name, port)
	}
	if errors.Is(err, errLineTooLong) {
		return fmt.Errorf("%s: handshake: got a line over 256 bytes want \"OK <local port>\"", c.name)
	}
	if err != nil {
		return c.ioErr(ctx, "handshake", err)
	}
	rest, ok := strings.CutPrefix(string(line), "OK ")
	if _, perr := strconv.ParseUint(rest, 10, 32); !ok || perr != nil {
		return fmt.Errorf("%s: handshake: got %q want \"OK <local port>\"", c.name, line)
	}
	return nil
}

// Refresh gives a guest restored from a snapshot fresh entropy and the
// host's clock (protocol 2; an older agent is refused with a message that
// says so).
func (c *Conn) Refresh(ctx context.Context, a RefreshArgs) (RefreshResult, error) {
	var r RefreshResult
	err := c.callV(ctx, refreshProtocol, OpRefresh, a, &r)
	return r, err
}

// Identity gives a guest forked from another guest's snapshot its own
// identity (protocol 3; an older agent is refused with a message that says
// so): the entropy and clock of [Conn.Refresh], then its machine-id,
// hostname, MAC, IPv4 address and default route, and new SSH host keys,
// which its SSH server serves once the call returns. With a.HostKeys it asks
// at protocol 4; an agent of protocol 3 is asked again without them, and
// makes its own keys.
//
// The answer comes from an untrusted guest: more than [MaxHostKeys] host
// keys, none, or one that is not a single authorized_keys line of at most
// 16 KiB that golang.org/x/crypto/ssh parses (a plain key: no options, no
// certificate), fails the call. HostKeys are returned in the form
// "<type> <base64>", without comments.
func (c *Conn) Identity(ctx context.Context, a IdentityArgs) (IdentityResult, error) {
	v := identityProtocol
	if len(a.HostKeys) > 0 {
		v = identityKeysProtocol
	}
	var r checkedIdentity
	err := c.callV(ctx, v, OpIdentity, a, &r)
	var old *oldAgentError
	if errors.As(err, &old) && old.speaks < v {
		if old.speaks < identityProtocol {
			old.needs = identityProtocol
			return IdentityResult{}, old
		}
		a.HostKeys = nil
		r = checkedIdentity{}
		err = c.callV(ctx, identityProtocol, OpIdentity, a, &r)
	}
	if err != nil {
		return IdentityResult{}, err
	}
	return r.IdentityResult, nil
}

// checkedIdentity decodes an identity result, checking its host keys one at
// a time and stopping past MaxHostKeys.
type checkedIdentity struct{ IdentityResult }

func (r *checkedIdentity) UnmarshalJSON(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return errors.New("result is not a JSON object")
	}
	seenKeys := false
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return err
		}
		switch key {
		case "clock_step_nanos":
			if err := dec.Decode(&r.ClockStepNanos); err != nil {
				return fmt.Errorf("clock_step_nanos: %w", err)
			}
		case "host_keys":
			if seenKeys {
				return errors.New(`"host_keys" appears twice`)
			}
			seenKeys = true
			if err := r.decodeHostKeys(dec); err != nil {
				return err
			}
		default:
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return err
			}
		}
	}
	if len(r.HostKeys) == 0 {
		return errors.New("the reply lists no host keys")
	}
	return nil
}

func (r *checkedIdentity) decodeHostKeys(dec *json.Decoder) error {
	if t, err := dec.Token(); err != nil || t != json.Delim('[') {
		return errors.New(`"host_keys" is not a list`)
	}
	seen := map[string]bool{}
	for dec.More() {
		n := len(r.HostKeys) + 1
		if n > MaxHostKeys {
			return fmt.Errorf("reply lists more than %d host keys, the most banger takes", MaxHostKeys)
		}
		var line string
		if err := dec.Decode(&line); err != nil {
			return fmt.Errorf("host key %d: %w", n, err)
		}
		k, err := checkHostKey(line)
		if err != nil {
			return fmt.Errorf("host key %d: %w", n, err)
		}
		if seen[k] {
			return fmt.Errorf("host key %d: listed twice", n)
		}
		seen[k] = true
		r.HostKeys = append(r.HostKeys, k)
	}
	_, err := dec.Token() // ']'
	return err
}

// checkHostKey refuses a host key line that is over maxHostKeyLine bytes,
// holds more than one line, or is not a plain public key in authorized_keys
// form, and returns it as "<type> <base64>".
func checkHostKey(line string) (string, error) {
	if len(line) > maxHostKeyLine {
		return "", fmt.Errorf("%d bytes, more than %d", len(line), maxHostKeyLine)
	}
	if strings.ContainsAny(line, "\r\n") {
		return "", errors.New("not a single line")
	}
	pub, _, options, rest, err := ssh.ParseAuthorizedKey([]byte(line))
	switch {
	case err != nil:
		return "", fmt.Errorf("not an authorized_keys line (%s): %s", strconv.Quote(cleanText(line, 64)), cleanText(err.Error(), 128))
	case len(options) > 0 || len(rest) > 0:
		return "", fmt.Errorf("not a plain key line (%s)", strconv.Quote(cleanText(line, 64)))
	}
	if _, ok := pub.(*ssh.Certificate); ok {
		return "", errors.New("a certificate, not a host key")
	}
	return strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(pub)), "\n"), nil
}

// Health asks the agent for the guest's health. Its text fields are cleaned
// with the rules of [Conn.Ports].
func (c *Conn) Health(ctx context.Context) (Health, error) {
	var h Health
	err := c.call(ctx, OpHealth, &h)
	h.AgentVersion = cleanText(h.AgentVersion, maxTextField)
	h.BootID = cleanText(h.BootID, maxTextField)
	h.Hostname = cleanText(h.Hostname, maxTextField)
	if h.SSHSessions != nil && *h.SSHSessions < 0 {
		h.SSHSessions = nil // no agent sends it: unknown
	}
	h.MemTotalBytes = max(h.MemTotalBytes, 0)
	if len(h.Disks) > maxDisks {
		h.Disks = h.Disks[:maxDisks]
	}
	for i := range h.Disks {
		d := &h.Disks[i]
		d.Path = cleanText(d.Path, 64)
		d.UsedBytes, d.TotalBytes = max(d.UsedBytes, 0), max(d.TotalBytes, 0)
	}
	return h, err
}

// Ports asks the agent for the guest's listening sockets. The answer comes
// from an untrusted guest: more than [MaxListeners] listeners, or one that
// no agent would send (an unknown proto, an address that is not an IP, a
// port outside 1-65535, a negative pid), fails the call; process names are
// cut to 256 bytes and their non-printable runes replaced by '?'.
func (c *Conn) Ports(ctx context.Context) ([]Listener, error) {
	var r checkedPorts
	err := c.call(ctx, OpPorts, &r)
	return r.listeners, err
}

// checkedPorts decodes a ports result one listener at a time, checking each
// and stopping past MaxListeners, so a hostile answer costs no more than a
// valid one.
type checkedPorts struct{ listeners []Listener }

func (p *checkedPorts) UnmarshalJSON(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return errors.New("result is not a JSON object")
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return err
		}
		if key != "listeners" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return err
			}
			continue
		}
		t, err := dec.Token()
		if err != nil {
			return err
		}
		if t == nil {
			continue // "listeners": null
		}
		if t != json.Delim('[') {
			return errors.New(`"listeners" is not a list`)
		}
		for dec.More() {
			if len(p.listeners) == MaxListeners {
				return fmt.Errorf("reply lists more than %d listeners, the most banger takes", MaxListeners)
			}
			var l Listener
			if err := dec.Decode(&l); err != nil {
				return fmt.Errorf("listener %d: %w", len(p.listeners)+1, err)
			}
			if err := checkListener(&l); err != nil {
				return fmt.Errorf("listener %d: %w", len(p.listeners)+1, err)
			}
			p.listeners = append(p.listeners, l)
		}
		if _, err := dec.Token(); err != nil { // ']'
			return err
		}
	}
	return nil
}

// checkListener refuses a listener no agent sends and cleans its process
// name.
func checkListener(l *Listener) error {
	switch l.Proto {
	case "tcp", "tcp6", "udp", "udp6":
	default:
		return fmt.Errorf("proto %q is not tcp, tcp6, udp or udp6", cleanText(l.Proto, 64))
	}
	if _, err := netip.ParseAddr(l.Address); err != nil || len(l.Address) > 64 {
		return fmt.Errorf("address %q is not an IP address", cleanText(l.Address, 64))
	}
	if l.Port < 1 || l.Port > 65535 {
		return fmt.Errorf("port %d is not in 1-65535", l.Port)
	}
	if l.PID < 0 {
		return fmt.Errorf("pid %d is negative", l.PID)
	}
	l.Process = cleanText(l.Process, maxTextField)
	return nil
}

// oldAgentError is an answer at another protocol version than asked: the
// guest's agent does not speak it.
type oldAgentError struct {
	name, op      string
	speaks, needs int
}

func (e *oldAgentError) Error() string {
	if e.op == OpIdentity {
		return fmt.Sprintf("%s: %s: the guest's banger-agent is too old for identity (it speaks protocol %d, identity needs %d); restarting the VM ('banger vm restart') or rebuilding its image updates it", e.name, e.op, e.speaks, e.needs)
	}
	return fmt.Sprintf("%s: %s: the guest's banger-agent speaks protocol %d and %s needs %d: it is older than this banger; restart the VM ('banger vm restart') to give it the current agent", e.name, e.op, e.speaks, e.op, e.needs)
}

// Close closes the stream.
func (c *Conn) Close() error { return c.rw.Close() }

// call asks op with protocol version 1: what every agent answers.
func (c *Conn) call(ctx context.Context, op string, result any) error {
	return c.callV(ctx, minProtocol, op, nil, result)
}

// callV asks op at protocol version v, with args.
func (c *Conn) callV(ctx context.Context, v int, op string, args any, result any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %s: %w", c.name, op, err)
	}
	id := newID()
	r := Request{V: v, ID: id, Op: op}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return err
		}
		r.Args = b
	}
	req, _ := json.Marshal(r)
	stop := c.watch(ctx)
	defer stop()
	// The leading "\n" ends any partial line left on a shared serial stream
	// by an earlier client, so it cannot corrupt this request; the agent
	// ignores blank lines.
	if _, err := c.rw.Write(append(append([]byte{'\n'}, req...), '\n')); err != nil {
		return c.ioErr(ctx, op, err)
	}
	for {
		line, err := readLineLimit(c.r, maxResponseLine)
		if errors.Is(err, errLineTooLong) {
			// No agent writes such a line, to us or to another client of a
			// shared stream. The stream is left mid-line: close it.
			c.rw.Close()
			return fmt.Errorf("%s: %s: the agent sent a reply line longer than %d bytes; connection closed", c.name, op, maxResponseLine)
		}
		if err != nil {
			return c.ioErr(ctx, op, err)
		}
		var resp Response
		if json.Unmarshal(line, &resp) != nil || resp.ID != id {
			continue // noise, or an answer to someone else's request
		}
		if resp.V != v {
			return &oldAgentError{name: c.name, op: op, speaks: resp.V, needs: v}
		}
		if !resp.OK {
			return fmt.Errorf("%s: %s: agent error: %s", c.name, op, cleanText(resp.Error, maxTextField))
		}
		if err := json.Unmarshal(resp.Result, result); err != nil {
			return fmt.Errorf("%s: %s: bad result: %w", c.name, op, err)
		}
		return nil
	}
}

// ioErr words an I/O error, reporting the context's error when the failure
// came from its deadline or cancellation.
func (c *Conn) ioErr(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %s: %w", c.name, op, ctx.Err())
	}
	// The stream's deadline can fire a hair before the context's timer.
	if dl, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(dl) {
		return fmt.Errorf("%s: %s: %w", c.name, op, context.DeadlineExceeded)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%s: %s: connection closed by the agent", c.name, op)
	}
	return fmt.Errorf("%s: %s: %w", c.name, op, err)
}

type deadliner interface{ SetDeadline(time.Time) error }

// watch applies ctx to the stream for the duration of one exchange; the
// returned func undoes it.
func (c *Conn) watch(ctx context.Context) func() {
	d, ok := c.rw.(deadliner)
	if ok {
		dl, _ := ctx.Deadline() // zero when none
		ok = d.SetDeadline(dl) == nil
	}
	if !ok {
		if ctx.Done() == nil {
			return func() {}
		}
		stop := context.AfterFunc(ctx, func() { c.rw.Close() })
		return func() { stop() }
	}
	done := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(done)
		d.SetDeadline(time.Unix(1, 0)) // wake blocked reads and writes now
	})
	return func() {
		if !stop() {
			<-done
		}
		d.SetDeadline(time.Time{})
	}
}

func newID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
