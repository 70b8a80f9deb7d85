//go:build linux

package agent

// Fuzz targets for both ends of the agent protocol: the host's client
// reading what a (hostile) guest sends, and the agent reading requests.
// scripts/fuzz.sh lists them. Names carry an "fz" prefix so they cannot
// collide with the package's other test helpers.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/crypto/ssh"
)

// fzIDMark in a fuzzed reply is replaced by the id of the client's request,
// so the fuzzer can answer it without guessing a random id.
const fzIDMark = "{{ID}}"

// fzPrintable reports whether s is safe to print as one line: valid UTF-8
// of printable runes only (no newline, no terminal escape).
func fzPrintable(s string) bool {
	return utf8.ValidString(s) && strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) < 0
}

// fzLines splits a stream the way the client reads it: on "\n", trailing
// "\r\n" trimmed, a last line without "\n" kept.
func fzLines(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			out = append(out, bytes.TrimRight(b, "\r\n"))
			break
		}
		out = append(out, bytes.TrimRight(b[:i+1], "\r\n"))
		b = b[i+1:]
	}
	return out
}

// fzGuest plays a guest's side of one connection on l: it reads the
// CONNECT line, writes handshake, reads the client's request, writes reply
// with fzIDMark replaced by its id, and hangs up. It returns the id it saw.
func fzGuest(l net.Listener, handshake, reply []byte) <-chan string {
	idc := make(chan string, 1)
	go func() {
		defer close(idc)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		if _, err := r.ReadString('\n'); err != nil {
			return
		}
		if _, err := c.Write(handshake); err != nil {
			return
		}
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			var req Request
			if json.Unmarshal(line, &req) != nil {
				continue
			}
			idc <- req.ID
			c.Write(bytes.ReplaceAll(reply, []byte(fzIDMark), []byte(req.ID)))
			return
		}
	}()
	return idc
}

// FuzzAgentClient: the host's client, talking to a guest that sends
// handshake after CONNECT and reply after the request, never panics or
// hangs (the guest hangs up after its reply, and the call returns well
// before its deadline). Every error is one printable line, whatever the
// guest put in it. A successful Ports or Health means the handshake line
// was "OK <port>" and the first reply line carrying the request's id said
// v 1, ok true; the listeners are at most MaxListeners, each with a known
// proto, an IP address, a port in 1-65535, a pid >= 0 and a printable
// process name of at most 256 bytes; Health's text fields are printable and
// at most 256 bytes, and its ssh_sessions is absent or at least 0.
func FuzzAgentClient(f *testing.F) {
	ok := []byte("OK 1073741824\n")
	f.Add(ok, []byte(`{"v":1,"id":"{{ID}}","ok":true,"result":{"listeners":[{"proto":"tcp6","address":"::","port":22,"pid":7,"process":"sshd"},{"proto":"udp","address":"127.0.0.53","port":53,"pid":1,"process":"systemd-resolve"}]}}`+"\n"), true)
	f.Add(ok, []byte(`{"v":1,"id":"{{ID}}","ok":true,"result":{"agent_version":"v1.2.3","protocol":1,"uptime_seconds":12.5,"boot_id":"0b5e","hostname":"brisk-otter","load1":0.1,"mem_available_bytes":123456}}`+"\n"), false)
	f.Add(ok, []byte(`{"v":1,"id":"{{ID}}","ok":true,"result":{"agent_version":"v1.2.3","protocol":3,"ssh_sessions":-2}}`+"\n"), false)
	f.Add([]byte("OK 5\nnoise\n"), []byte("garbage from the console\n"+`{"v":1,"id":"stale","ok":true,"result":{"listeners":[]}}`+"\r\n"+`{"v":1,"id":"{{ID}}","ok":false,"error":"boom\u001b[31m\nsecond line"}`), true)
	f.Add(ok, []byte(`{"v":2,"id":"{{ID}}","ok":true,"result":{}}`), false)
	f.Add(ok, []byte(`{"v":1,"id":"{{ID}}","ok":true,"result":{"listeners":[{"proto":"sctp","address":"not an ip","port":0,"pid":-1,"process":"\u001b]0;pwned\u0007"}]}}`), true)
	f.Add(ok, []byte(`{"v":1,"id":"{{ID}}","ok":true,"result":{"listeners":null,"listeners":[{"proto":"tcp","address":"10.0.0.1","port":80,"pid":0,"process":"`+strings.Repeat("é", 300)+`"}]}}`), true)
	f.Add(ok, []byte(`{"v":1,"id":"{{ID}}","ok":true,"result":{"agent_version":"`+strings.Repeat("\\u0007", 100)+`","hostname":7}}`), false)
	f.Add([]byte("NOPE\n"), []byte{}, true)
	f.Add([]byte("OK 99999999999\n"), []byte{}, false)
	f.Add([]byte("OK 1"), []byte{}, true)

	f.Fuzz(func(t *testing.T, handshake, reply []byte, ports bool) {
		if !bytes.Contains(handshake, []byte("\n")) {
			// The client waits for the end of the handshake line; a guest
			// that never ends it is the deadline's job, not the fuzzer's.
			handshake = append(bytes.Clone(handshake), '\n')
		}
		sock := filepath.Join(t.TempDir(), "a.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		idc := fzGuest(l, handshake, reply)

		const deadline = 20 * time.Second
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		start := time.Now()
		var (
			ls []Listener
			h  Health
		)
		c, err := DialUDS(ctx, sock, 1024)
		if err == nil {
			if ports {
				ls, err = c.Ports(ctx)
			} else {
				h, err = c.Health(ctx)
			}
			c.Close()
		}
		id := <-idc
		if took := time.Since(start); took > deadline/2 {
			t.Fatalf("the call took %v against a guest that hung up (err %v)", took, err)
		}
		if err != nil {
			if !fzPrintable(err.Error()) {
				t.Fatalf("error is not one printable line: %q", err.Error())
			}
			return
		}

		// The handshake the client accepted.
		hs, rest, _ := bytes.Cut(handshake, []byte("\n"))
		hs = bytes.TrimRight(hs, "\r")
		port, found := strings.CutPrefix(string(hs), "OK ")
		if _, perr := strconv.ParseUint(port, 10, 32); !found || perr != nil || len(hs) > 256 {
			t.Fatalf("accepted the handshake line %q", hs)
		}
		// The reply line the client took as its answer.
		var resp *Response
		for _, line := range fzLines(append(rest, bytes.ReplaceAll(reply, []byte(fzIDMark), []byte(id))...)) {
			var r Response
			if json.Unmarshal(line, &r) == nil && r.ID == id {
				resp = &r
				break
			}
		}
		if resp == nil || resp.V != minProtocol || !resp.OK { // health and ports are asked at version 1
			t.Fatalf("succeeded, yet the first reply with id %q is %+v", id, resp)
		}

		if !ports {
			for _, s := range []string{h.AgentVersion, h.BootID, h.Hostname} {
				if !fzPrintable(s) || len(s) > 256 {
					t.Fatalf("health text %q is not printable or over 256 bytes", s)
				}
			}
			if h.SSHSessions != nil && *h.SSHSessions < 0 {
				t.Fatalf("ssh_sessions %d", *h.SSHSessions)
			}
			return
		}
		if len(ls) > MaxListeners {
			t.Fatalf("%d listeners, over MaxListeners (%d)", len(ls), MaxListeners)
		}
		for _, l := range ls {
			switch l.Proto {
			case "tcp", "tcp6", "udp", "udp6":
			default:
				t.Fatalf("listener with proto %q", l.Proto)
			}
			if _, err := netip.ParseAddr(l.Address); err != nil {
				t.Fatalf("listener with address %q", l.Address)
			}
			if l.Port < 1 || l.Port > 65535 || l.PID < 0 {
				t.Fatalf("listener with port %d pid %d", l.Port, l.PID)
			}
			if !fzPrintable(l.Process) || len(l.Process) > 256 {
				t.Fatalf("process name %q is not printable or over 256 bytes", l.Process)
			}
		}
	})
}

// fzStream is an in-memory ReadWriteCloser: reads come from in, writes go
// to out.
type fzStream struct {
	in  io.Reader
	out bytes.Buffer
}

func (s *fzStream) Read(p []byte) (int, error)  { return s.in.Read(p) }
func (s *fzStream) Write(p []byte) (int, error) { return s.out.Write(p) }
func (s *fzStream) Close() error                { return nil }

// FuzzAgentServe: the agent's ServeStream, fed any bytes, never panics and
// ends cleanly at EOF. It answers each non-blank request line (and each
// over-long one) with exactly one response line, in order: valid JSON of
// the request's protocol version (or the newest for an unparsable line or an
// unsupported version), carrying the request's id when the request parsed,
// ok with a result or not ok with an error, never both. It is ok only for a
// known op at a version that has it (never identity: TestMain's identity
// hooks refuse), and a ports result lists at most MaxListeners listeners.
func FuzzAgentServe(f *testing.F) {
	f.Add([]byte(`{"v":1,"id":"a","op":"health"}` + "\n"))
	f.Add([]byte("\n" + `{"v":1,"id":"b","op":"ports"}` + "\r\n\n  \n"))
	f.Add([]byte(`{"v":2,"id":"c","op":"health"}` + "\n" + `{"v":1,"id":"d","op":"reboot"}` + "\n" + `not json` + "\n" + `{"v":1,"id":"e","op":"health"}`))
	f.Add([]byte(`{"v":1,"id":{"nested":true},"op":"health"}` + "\n" + `[]` + "\n" + `null` + "\n"))
	f.Add([]byte(strings.Repeat("x", maxRequestLine+10) + "\n" + `{"v":1,"id":"after","op":"health"}` + "\n"))
	f.Add([]byte(`{"v":3,"id":"i","op":"identity","args":{"time_unix_nano":1777636800000000000,"entropy":"` + strings.Repeat("QUFB", 16) +
		`","machine_id":"5f0c6d8e2b3a4c1d9e8f7a6b5c4d3e2f","hostname":"child","mac":"02:fc:00:00:00:05","address":"172.16.0.5/24","gateway":"172.16.0.1"}}` + "\n" +
		`{"v":2,"id":"j","op":"identity","args":{}}` + "\n" + `{"v":3,"id":"k","op":"identity","args":{"mac":"01:00:5e:00:00:01","extra":1}}` + "\n" +
		`{"v":3,"id":"l","op":"identity","args":null}` + "\n" + `{"v":3,"id":"m","op":"identity"}` + "\n"))

	f.Fuzz(func(t *testing.T, in []byte) {
		// Expected responses: one per non-blank line (and per over-long
		// line that ends in "\n"), with the request it answers.
		type want struct {
			req     *Request
			tooLong bool
		}
		var wants []want
		for b := in; len(b) > 0; {
			seg := b
			i := bytes.IndexByte(b, '\n')
			if i >= 0 {
				seg, b = b[:i+1], b[i+1:]
			} else {
				b = nil
			}
			if len(seg) > maxRequestLine+2 {
				if i >= 0 {
					wants = append(wants, want{tooLong: true})
				}
				continue
			}
			line := bytes.TrimRight(seg, "\r\n")
			if len(strings.TrimSpace(string(line))) == 0 {
				continue
			}
			var req Request
			if json.Unmarshal(line, &req) == nil {
				wants = append(wants, want{req: &req})
			} else {
				wants = append(wants, want{})
			}
		}

		s := &fzStream{in: bytes.NewReader(in)}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := ServeStream(ctx, s); err != nil {
			t.Fatalf("ServeStream: %v", err)
		}
		out := s.out.Bytes()
		if len(out) > 0 && out[len(out)-1] != '\n' {
			t.Fatalf("output does not end in a newline: %q", out)
		}
		lines := fzLines(out)
		if len(lines) != len(wants) {
			t.Fatalf("%d responses to %d request lines:\n%s", len(lines), len(wants), out)
		}
		for i, line := range lines {
			var resp Response
			dec := json.NewDecoder(bytes.NewReader(line))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&resp); err != nil {
				t.Fatalf("response %d is not a Response: %v: %q", i, err, line)
			}
			wantV := ProtocolVersion // an unparsable line or an unsupported version
			if w := wants[i]; w.req != nil && w.req.V >= minProtocol && w.req.V <= ProtocolVersion {
				wantV = w.req.V // answered in the request's version
			}
			if resp.V != wantV {
				t.Fatalf("response %d has v %d, want %d", i, resp.V, wantV)
			}
			if resp.OK == (resp.Error != "") || resp.OK != (len(resp.Result) > 0) {
				t.Fatalf("response %d: ok %v with error %q and result %s", i, resp.OK, resp.Error, resp.Result)
			}
			w := wants[i]
			if w.req == nil {
				if resp.OK || resp.ID != "" {
					t.Fatalf("response %d to an unparsable line: %q", i, line)
				}
				continue
			}
			if resp.ID != w.req.ID {
				t.Fatalf("response %d has id %q, the request %q", i, resp.ID, w.req.ID)
			}
			known := w.req.Op == OpHealth || w.req.Op == OpPorts || (w.req.Op == OpRefresh && w.req.V >= 2) || (w.req.Op == OpIdentity && w.req.V >= 3)
			if resp.OK && (w.req.V < minProtocol || w.req.V > ProtocolVersion || !known) {
				t.Fatalf("response %d is ok for request %+v", i, *w.req)
			}
			if !known && resp.OK {
				t.Fatalf("response %d is ok for unknown op %q", i, w.req.Op)
			}
			if resp.OK && w.req.Op == OpPorts {
				var pr PortsResult
				if err := json.Unmarshal(resp.Result, &pr); err != nil || len(pr.Listeners) > MaxListeners {
					t.Fatalf("ports result: %v, %d listeners", err, len(pr.Listeners))
				}
			}
			if resp.OK && w.req.Op == OpIdentity {
				// TestMain's identity hooks refuse: no identity gets through.
				t.Fatalf("response %d: identity succeeded against refusing hooks: %s", i, resp.Result)
			}
			if resp.OK && w.req.Op == OpHealth {
				var h Health
				if err := json.Unmarshal(resp.Result, &h); err != nil || h.Protocol != ProtocolVersion {
					t.Fatalf("health result %s: %v", resp.Result, err)
				}
			}
		}
	})
}

// FuzzIdentityResult: the host's decoding of an identity answer (the result
// object of an untrusted guest) never panics; an error is one printable
// line; a success has 1 to MaxHostKeys distinct host keys, each a plain
// public key that golang.org/x/crypto/ssh parses, in its canonical
// "<type> <base64>" form, at most 16 KiB.
func FuzzIdentityResult(f *testing.F) {
	const ed = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGAuzO6Af10xusBDT4OKcy2TbECvwoCxu3YlvxncYbtV"
	const ecdsa = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBFD9yLKbL2geUH6YdkmvgxZsUHsb3/ZOJkMLN051b9711CmMad+dPco3xJMVtDuEBI7g3V0HR/NKBg3wgaw+0OQ="
	f.Add([]byte(`{"clock_step_nanos":6012345678,"host_keys":["` + ed + ` root@child","` + ecdsa + `"]}`))
	f.Add([]byte(`{"host_keys":["` + ed + `","` + ed + `"]}`))
	f.Add([]byte(`{"host_keys":["command=\"x\" ` + ed + `"]}`))
	f.Add([]byte(`{"host_keys":["ssh-ed25519 AAAA\u001b[2J"],"clock_step_nanos":"x"}`))
	f.Add([]byte(`{"host_keys":[` + strings.Repeat(`"`+ed+`",`, 9) + `"x"]}`))
	f.Add([]byte(`{"host_keys":null}`))

	f.Fuzz(func(t *testing.T, result []byte) {
		var r checkedIdentity
		err := json.Unmarshal(result, &r)
		if err != nil {
			if !fzPrintable(err.Error()) || len(err.Error()) > 1024 {
				t.Fatalf("error is not one short printable line: %q", err.Error())
			}
			return
		}
		if n := len(r.HostKeys); n < 1 || n > MaxHostKeys {
			t.Fatalf("%d host keys", n)
		}
		seen := map[string]bool{}
		for _, k := range r.HostKeys {
			pub, _, opts, rest, err := ssh.ParseAuthorizedKey([]byte(k))
			if err != nil || len(opts) > 0 || len(rest) > 0 || len(k) > maxHostKeyLine || seen[k] {
				t.Fatalf("host key %q: %v (options %q, rest %q, seen %v)", k, err, opts, rest, seen[k])
			}
			if _, isCert := pub.(*ssh.Certificate); isCert || strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))) != k {
				t.Fatalf("host key %q is a certificate or not in canonical form", k)
			}
			seen[k] = true
		}
	})
}
