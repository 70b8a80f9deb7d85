//go:build linux

package agent

import (
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A guest with dropbear listening on 22: two sessions to it (one from the
// host, one from the guest itself), plus what must not count: the listener,
// a session that is closing (TIME_WAIT, FIN_WAIT1, CLOSE_WAIT), the guest's
// own ssh to another host's port 22, and a connection to another port.
const sessionsTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 101 1 0000000000000000 100 0 0 10 0
   1: 0500A8C0:0016 0100A8C0:D431 01 00000000:00000000 02:0009A9D2 00000000     0        0 102 4 0000000000000000 20 4 31 10 -1
   2: 0100007F:0016 0100007F:A002 01 00000000:00000000 00:00000000 00000000     0        0 103 1 0000000000000000 20 4 30 10 -1
   3: 0500A8C0:0016 0100A8C0:D432 06 00000000:00000000 03:00000F23 00000000     0        0 0 3 0000000000000000
   4: 0500A8C0:0016 0100A8C0:D433 04 00000001:00000000 01:00000014 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1
   5: 0500A8C0:0016 0100A8C0:D434 08 00000000:00000000 00:00000000 00000000     0        0 104 1 0000000000000000 20 4 30 10 -1
   6: 0500A8C0:C350 0A0A0A0A:0016 01 00000000:00000000 02:0009A9D2 00000000     0        0 105 2 0000000000000000 20 4 30 10 -1
   7: 0500A8C0:1F90 0100A8C0:D435 01 00000000:00000000 00:00000000 00000000  1000        0 106 1 0000000000000000 20 4 30 10 -1
`

// The same guest over IPv6: one session from a v6 client, one from a v4
// client on the dual-stack listener (a v4-mapped address), the listener,
// and a connection to port 2222 (not SSH's port).
const sessionsTCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 201 1 0000000000000000 100 0 0 10 0
   1: B80D0120000000000000000005000000:0016 B80D0120000000000000000001000000:E29A 01 00000000:00000000 02:000AFC2E 00000000     0        0 202 2 0000000000000000 20 4 28 10 -1
   2: 0000000000000000FFFF00000500A8C0:0016 0000000000000000FFFF00000100A8C0:C351 01 00000000:00000000 02:000AFC2E 00000000     0        0 203 2 0000000000000000 20 4 28 10 -1
   3: B80D0120000000000000000005000000:08AE B80D0120000000000000000001000000:E29B 01 00000000:00000000 00:00000000 00000000     0        0 204 1 0000000000000000 20 4 28 10 -1
`

func TestCountEstablished(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		port, want int
	}{
		{"tcp", sessionsTCP, 22, 2},
		{"tcp6", sessionsTCP6, 22, 2},
		{"tcp other port", sessionsTCP, 8080, 1},
		{"tcp6 other port", sessionsTCP6, 2222, 1},
		{"header only", strings.SplitAfter(sessionsTCP, "\n")[0], 22, 0},
		{"empty", "", 22, 0},
		{"blank lines", sessionsTCP + "\n\n", 22, 2},
	} {
		got, err := countEstablished([]byte(tc.text), tc.port)
		if err != nil || got != tc.want {
			t.Errorf("%s: %d, %v; want %d", tc.name, got, err, tc.want)
		}
	}
	hdr := strings.SplitAfter(sessionsTCP, "\n")[0]
	for _, bad := range []string{
		hdr + "   1: 0500A8C0:0016\n",
		hdr + "   1: 0500A8C0:XYZ 0100A8C0:D431 01 00000000:00000000\n",
		hdr + "   1: 0500A8C0 0100A8C0:D431 01 00000000:00000000\n",
	} {
		if n, err := countEstablished([]byte(bad), 22); err == nil {
			t.Errorf("%q: %d, no error", bad, n)
		}
	}
}

// fakeProc is a /proc with what collectHealth reads, and the given
// net/tcp and net/tcp6 (nothing when "").
func fakeProc(t *testing.T, tcp, tcp6 string) string {
	t.Helper()
	proc := t.TempDir()
	files := map[string]string{
		"uptime":                    "123.45 200.00\n",
		"sys/kernel/random/boot_id": "dceefba6-a723-4b14-935e-875e70cf7d84\n",
		"sys/kernel/hostname":       "brisk-otter\n",
		"loadavg":                   "0.58 0.40 0.30 1/123 456\n",
		"meminfo":                   "MemTotal: 262144 kB\nMemAvailable: 131072 kB\n",
	}
	if tcp != "" {
		files["net/tcp"] = tcp
	}
	if tcp6 != "" {
		files["net/tcp6"] = tcp6
	}
	for name, content := range files {
		p := filepath.Join(proc, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return proc
}

func TestHealthSSHSessions(t *testing.T) {
	for _, tc := range []struct {
		name, tcp, tcp6 string
		want            *int
	}{
		{"v4 and v6", sessionsTCP, sessionsTCP6, intp(4)},
		{"no IPv6", sessionsTCP, "", intp(2)},
		{"no sessions", strings.SplitAfter(sessionsTCP, "\n")[0], "", intp(0)},
		// Not countable: health still answers, without the field.
		{"no /proc/net/tcp", "", sessionsTCP6, nil},
		{"malformed", sessionsTCP + "   9: garbage 0100A8C0:D431 01 x\n", sessionsTCP6, nil},
	} {
		h, err := collectHealth(fakeProc(t, tc.tcp, tc.tcp6))
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if h.Hostname != "brisk-otter" || h.MemAvailableBytes != 131072*1024 {
			t.Errorf("%s: health %+v", tc.name, h)
		}
		switch {
		case tc.want == nil && h.SSHSessions != nil:
			t.Errorf("%s: ssh_sessions %d, want none", tc.name, *h.SSHSessions)
		case tc.want != nil && (h.SSHSessions == nil || *h.SSHSessions != *tc.want):
			t.Errorf("%s: ssh_sessions %v, want %d", tc.name, h.SSHSessions, *tc.want)
		}
		b, _ := json.Marshal(h)
		if has := strings.Contains(string(b), `"ssh_sessions":`); has != (tc.want != nil) {
			t.Errorf("%s: %s", tc.name, b)
		}
	}
}

// TestHealthSSHSessionsReal: a connection to a listener on port 22 would
// need root and a free port 22; this counts what the host has and checks
// that an established connection to another port does not change it.
func TestHealthSSHSessionsReal(t *testing.T) {
	h, err := CollectHealth()
	if err != nil {
		t.Fatal(err)
	}
	if h.SSHSessions == nil || *h.SSHSessions < 0 {
		t.Fatalf("ssh_sessions %v on this host", h.SSHSessions)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	p, _ := strconv.Atoi(port)
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := countEstablished(b, p); err != nil || n != 1 {
		// Only the accepted side has local port p.
		t.Fatalf("established to port %d: %d, %v; want 1", p, n, err)
	}
}

// TestClientSSHSessions: the host tells an agent that does not report
// sessions (older than the field) from one that reports none, and takes a
// negative count as none reported.
func TestClientSSHSessions(t *testing.T) {
	for _, tc := range []struct {
		result string
		want   *int
	}{
		{`{"agent_version":"v0.9","protocol":2,"hostname":"x"}`, nil},
		{`{"agent_version":"v1","protocol":3,"ssh_sessions":0}`, intp(0)},
		{`{"agent_version":"v1","protocol":3,"ssh_sessions":3}`, intp(3)},
		{`{"agent_version":"v1","protocol":3,"ssh_sessions":-1}`, nil},
		{`{"agent_version":"v1","protocol":3,"ssh_sessions":null}`, nil},
	} {
		path := hostileGuestAgent(t, func(req Request, w io.Writer) {
			if req.Op != OpHealth || req.V != 1 {
				io.WriteString(w, `{"v":1,"id":"`+req.ID+`","ok":false,"error":"unexpected"}`+"\n")
				return
			}
			answer(w, req, []byte(tc.result))
		})
		c, ctx := dialHostile(t, path, 10*time.Second)
		h, err := c.Health(ctx)
		if err != nil {
			t.Fatalf("%s: %v", tc.result, err)
		}
		switch {
		case tc.want == nil && h.SSHSessions != nil:
			t.Errorf("%s: ssh_sessions %d, want none", tc.result, *h.SSHSessions)
		case tc.want != nil && (h.SSHSessions == nil || *h.SSHSessions != *tc.want):
			t.Errorf("%s: ssh_sessions %v, want %d", tc.result, h.SSHSessions, *tc.want)
		}
	}
}

func intp(n int) *int { return &n }
