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
	"runtime"
	"strings"
	"testing"
	"time"
)

// hostileGuestAgent is a fake for a hostile guest: a real unix socket that
// does Firecracker's vsock handshake and reads real protocol requests, then
// answers each with whatever reply writes (which may never end).
func hostileGuestAgent(t *testing.T, reply func(req Request, w io.Writer)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
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
				defer c.Close()
				r := bufio.NewReader(c)
				if _, err := r.ReadString('\n'); err != nil { // CONNECT <port>
					return
				}
				if _, err := io.WriteString(c, "OK 1073741824\n"); err != nil {
					return
				}
				for {
					line, err := r.ReadBytes('\n')
					if err != nil {
						return
					}
					var req Request
					if json.Unmarshal(line, &req) != nil {
						continue // the blank line before each request
					}
					reply(req, c)
				}
			}()
		}
	}()
	return path
}

// answer writes one response line for req with result as its raw result.
func answer(w io.Writer, req Request, result []byte) {
	io.WriteString(w, `{"v":1,"id":"`+req.ID+`","ok":true,"result":`)
	w.Write(result)
	io.WriteString(w, "}\n")
}

// emptyListeners is {"listeners":[{},{},…]} of about n bytes.
func emptyListeners(n int) []byte {
	b := make([]byte, 0, n+32)
	b = append(b, `{"listeners":[{}`...)
	for len(b) < n {
		b = append(b, `,{}`...)
	}
	return append(b, "]}"...)
}

func dialHostile(t *testing.T, path string, timeout time.Duration) (*Conn, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	c, err := DialUDS(ctx, path, 1024)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, ctx
}

// TestHostileAgentHugeReply: a 16 MiB reply line (5.6 M empty listeners, the
// reply that once cost the daemon 2 GiB) is refused at the line limit, fast
// and without reading it all into memory.
func TestHostileAgentHugeReply(t *testing.T) {
	huge := emptyListeners(16<<20 - 256) // just under the old 16 MiB line limit
	path := hostileGuestAgent(t, func(req Request, w io.Writer) { answer(w, req, huge) })
	c, ctx := dialHostile(t, path, 10*time.Second)

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	ls, err := c.Ports(ctx)
	took := time.Since(start)
	runtime.ReadMemStats(&after)

	if err == nil {
		t.Fatalf("a 16 MiB reply was accepted: %d listeners", len(ls))
	}
	if want := fmt.Sprintf("reply line longer than %d bytes", maxResponseLine); !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want it to say %q", err, want)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error is not one line: %q", err)
	}
	if took > 2*time.Second {
		t.Errorf("refusing took %v", took)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Errorf("refusing the reply allocated %d MiB", alloc>>20)
	}
}

// TestHostileAgentEndlessLine: a reply that never ends its line is refused
// as soon as it passes the limit, not when the deadline fires.
func TestHostileAgentEndlessLine(t *testing.T) {
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	path := hostileGuestAgent(t, func(req Request, w io.Writer) {
		for {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	c, ctx := dialHostile(t, path, 5*time.Second)
	start := time.Now()
	_, err := c.Ports(ctx)
	if err == nil || !strings.Contains(err.Error(), "reply line longer than") {
		t.Fatalf("err = %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("refusing an endless line took %v", took)
	}
}

// TestHostileAgentNeverAnswers: a guest that streams other clients' answers
// forever and never ours is cut off by the deadline.
func TestHostileAgentNeverAnswers(t *testing.T) {
	path := hostileGuestAgent(t, func(req Request, w io.Writer) {
		for {
			if _, err := io.WriteString(w, `{"v":1,"id":"someone-else","ok":true,"result":{"listeners":[]}}`+"\n"); err != nil {
				return
			}
		}
	})
	c, ctx := dialHostile(t, path, 300*time.Millisecond)
	start := time.Now()
	_, err := c.Ports(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("deadline of 300ms ended the call after %v", took)
	}
}

// TestHostileAgentTooManyListeners: a reply under the line limit that lists
// more than MaxListeners valid listeners is refused, naming the limit.
func TestHostileAgentTooManyListeners(t *testing.T) {
	var b bytes.Buffer
	b.WriteString(`{"listeners":[`)
	n := 0
	for b.Len() < maxResponseLine-1024 {
		if n > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"proto":"tcp","address":"10.0.0.1","port":%d}`, 1+n%65535)
		n++
	}
	b.WriteString(`]}`)
	if n <= MaxListeners {
		t.Fatalf("test reply has only %d listeners", n)
	}
	reply := b.Bytes()
	path := hostileGuestAgent(t, func(req Request, w io.Writer) { answer(w, req, reply) })
	c, ctx := dialHostile(t, path, 10*time.Second)
	ls, err := c.Ports(ctx)
	if err == nil {
		t.Fatalf("%d listeners accepted", len(ls))
	}
	if want := fmt.Sprintf("more than %d listeners", MaxListeners); !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want it to say %q", err, want)
	}
}

// TestHostileAgentBadValues: listeners that no real agent sends are refused,
// and free text (process names, agent version, error text) reaches the host
// only as short, printable strings: no terminal escapes, no megabytes.
func TestHostileAgentBadValues(t *testing.T) {
	evil := "\x1b]0;pwned\x07\x1b[2J" + strings.Repeat("A", 100<<10)
	for _, tc := range []struct{ listener, want string }{
		{`{"proto":"sctp","address":"10.0.0.1","port":80}`, `listener 1: proto "sctp" is not tcp, tcp6, udp or udp6`},
		{`{"proto":"tcp","address":"evil.example","port":80}`, `listener 1: address "evil.example" is not an IP address`},
		{`{"proto":"tcp","address":"10.0.0.1","port":70000}`, `listener 1: port 70000 is not in 1-65535`},
		{`{"proto":"tcp","address":"10.0.0.1","port":80,"pid":-1}`, `listener 1: pid -1 is negative`},
		{`{"proto":"tcp","address":"` + strings.Repeat("1", 100<<10) + `","port":80}`, `listener 1: address "` + strings.Repeat("1", 61) + `…" is not an IP address`},
	} {
		reply := []byte(`{"listeners":[` + tc.listener + `]}`)
		path := hostileGuestAgent(t, func(req Request, w io.Writer) { answer(w, req, reply) })
		c, ctx := dialHostile(t, path, 10*time.Second)
		_, err := c.Ports(ctx)
		if err == nil || !strings.HasSuffix(err.Error(), tc.want) {
			t.Errorf("%.60s: err = %.300v\nwant suffix %s", tc.listener, err, tc.want)
		}
	}

	js, _ := json.Marshal(evil)
	path := hostileGuestAgent(t, func(req Request, w io.Writer) {
		switch req.Op {
		case OpHealth:
			answer(w, req, []byte(`{"agent_version":`+string(js)+`,"hostname":`+string(js)+`,"boot_id":`+string(js)+`}`))
		case OpPorts:
			answer(w, req, []byte(`{"listeners":[{"proto":"tcp","address":"10.0.0.1","port":80,"pid":7,"process":`+string(js)+`}]}`))
		default:
			io.WriteString(w, `{"v":1,"id":"`+req.ID+`","ok":false,"error":`+string(js)+"}\n")
		}
	})
	c, ctx := dialHostile(t, path, 10*time.Second)
	h, err := c.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := c.Ports(ctx)
	if err != nil || len(ls) != 1 {
		t.Fatalf("ports: %v, %v", ls, err)
	}
	for what, s := range map[string]string{"agent_version": h.AgentVersion, "hostname": h.Hostname, "boot_id": h.BootID, "process": ls[0].Process} {
		if len(s) > maxTextField || strings.ContainsAny(s, "\x1b\x07") {
			t.Errorf("%s reached the host as %d bytes: %.40q", what, len(s), s)
		}
	}
	err = c.call(ctx, "no-such-op", &struct{}{})
	if err == nil || len(err.Error()) > 2*maxTextField || strings.ContainsAny(err.Error(), "\x1b\x07") {
		t.Errorf("agent error reached the host as %d bytes: %.60q", len(fmt.Sprint(err)), fmt.Sprint(err))
	}
}

// TestPortsAnswerLimits: the agent's own answer never trips the host's
// limits. The longest real answer fits a response line, and more than
// MaxListeners listeners become an error that names the count.
func TestPortsAnswerLimits(t *testing.T) {
	longest := Listener{Proto: "tcp6", Address: "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", Port: 65535, PID: 4194304, Process: strings.Repeat("\x01", 15)}
	ls := make([]Listener, MaxListeners)
	for i := range ls {
		ls[i] = longest
	}
	res, err := portsResult(ls)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(res)
	line, _ := json.Marshal(Response{V: ProtocolVersion, ID: strings.Repeat("f", 64), OK: true, Result: raw})
	if len(line) > maxResponseLine {
		t.Errorf("the longest valid answer is %d bytes, over the %d-byte line limit", len(line), maxResponseLine)
	}
	_, err = portsResult(append(ls, longest))
	if want := fmt.Sprintf("the guest has %d listening sockets, more than the %d banger lists", MaxListeners+1, MaxListeners); err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
}
