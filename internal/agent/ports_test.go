//go:build linux

package agent

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestParseHexAddrPort(t *testing.T) {
	for _, tc := range []struct{ in, addr string }{
		{"0100007F:0016", "127.0.0.1:22"},
		{"00000000:1F90", "0.0.0.0:8080"},
		{"00000000000000000000000000000000:0016", "[::]:22"},
		{"00000000000000000000000001000000:0277", "[::1]:631"},
		{"0000000000000000FFFF00000100007F:0035", "[::ffff:127.0.0.1]:53"},
		{"B80D0120000000000000000001000000:01BB", "[2001:db8::1]:443"},
	} {
		a, p, err := parseHexAddrPort(tc.in)
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if got := netip.AddrPortFrom(a, uint16(p)).String(); got != tc.addr {
			t.Errorf("%s = %s, want %s", tc.in, got, tc.addr)
		}
	}
	for _, bad := range []string{"", "0100007F", "0100007:0016", "0100007F:XYZ", "0100007G:0016", "0100007F:10000"} {
		if _, _, err := parseHexAddrPort(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

const procNetTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 101 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 102 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 103 1 0000000000000000 100 0 0 10 0
   3: 0100007F:0016 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 104 1 0000000000000000 20 4 30 10 -1
`

const procNetUDP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  10: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 201 2 0000000000000000 0
  11: 00000000000000000000000001000000:3039 00000000000000000000000001000000:0050 01 00000000:00000000 00:00000000 00000000     0        0 202 2 0000000000000000 0
  12: 0000000000000000FFFF00000100007F:0044 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 203 2 0000000000000000 0
  13: 00000000000000000000000001000000:3039 00000000000000000000000001000000:0050 07 00000000:00000000 00:00000000 00000000     0        0 204 2 0000000000000000 0
  14: 00000000000000000000000001000000:3039 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 205 2 0000000000000000 0
`

// TestCollectPortsFakeProc runs the collector on a made-up /proc: states,
// owners, the v4-mapped form, sorting and deduplication.
func TestCollectPortsFakeProc(t *testing.T) {
	proc := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		p := filepath.Join(proc, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("net/tcp", procNetTCP)
	write("net/udp", "  sl  local_address rem_address   st\n")
	write("net/udp6", procNetUDP6)
	// no net/tcp6: a kernel without IPv6
	owners := map[int]map[string]string{
		7:   {"comm": "sshd", "3": "socket:[101]", "4": "pipe:[9]"},
		300: {"comm": "web", "5": "socket:[102]", "6": "socket:[103]"},
		301: {"comm": "web", "5": "socket:[102]"}, // forked child: the lowest pid wins
		42:  {"comm": "dnsmasq", "9": "socket:[201]", "10": "socket:[203]"},
	}
	for pid, m := range owners {
		dir := filepath.Join(proc, strconv.Itoa(pid))
		write(filepath.Join(strconv.Itoa(pid), "comm"), m["comm"]+"\n")
		if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
			t.Fatal(err)
		}
		for fd, target := range m {
			if fd == "comm" {
				continue
			}
			if err := os.Symlink(target, filepath.Join(dir, "fd", fd)); err != nil {
				t.Fatal(err)
			}
		}
	}
	got, err := collectPorts(proc)
	if err != nil {
		t.Fatal(err)
	}
	want := []Listener{
		{"tcp", "0.0.0.0", 22, 7, "sshd"},
		{"udp6", "::", 53, 42, "dnsmasq"},
		{"udp6", "127.0.0.1", 68, 42, "dnsmasq"},
		{"tcp", "127.0.0.1", 8080, 300, "web"}, // two SO_REUSEPORT sockets, one entry
		{"udp6", "::1", 12345, 0, ""},          // no owner found
	}
	if len(got) != len(want) {
		t.Fatalf("got %d listeners %+v, want %+v", len(got), got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
}

// TestCollectPortsReal opens real sockets in this process and finds them,
// with this process's pid and comm.
func TestCollectPortsReal(t *testing.T) {
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	comm := strings.TrimSpace(string(b))
	pid := os.Getpid()

	type sock struct {
		proto, addr string
		port        int
		close       func() error
	}
	var socks []sock
	tcp := func(network, addr string) {
		l, err := net.Listen(network, addr)
		if err != nil {
			t.Logf("skipping %s %s: %v", network, addr, err)
			return
		}
		t.Cleanup(func() { l.Close() })
		a := l.Addr().(*net.TCPAddr)
		socks = append(socks, sock{network, a.IP.String(), a.Port, l.Close})
	}
	udp := func(network, addr string) {
		c, err := net.ListenPacket(network, addr)
		if err != nil {
			t.Logf("skipping %s %s: %v", network, addr, err)
			return
		}
		t.Cleanup(func() { c.Close() })
		a := c.LocalAddr().(*net.UDPAddr)
		socks = append(socks, sock{network, a.IP.String(), a.Port, c.Close})
	}
	tcp("tcp4", "127.0.0.1:0")
	tcp("tcp6", "[::1]:0")
	udp("udp4", "127.0.0.1:0")
	udp("udp6", "[::1]:0")
	if len(socks) < 2 {
		t.Fatal("could not open the IPv4 sockets")
	}
	find := func(ls []Listener, s sock) *Listener {
		proto := strings.TrimSuffix(s.proto, "4")
		for i, l := range ls {
			if l.Proto == proto && l.Address == s.addr && l.Port == s.port {
				return &ls[i]
			}
		}
		return nil
	}

	ls, err := CollectPorts()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range socks {
		l := find(ls, s)
		if l == nil {
			t.Errorf("%s %s:%d not found in %+v", s.proto, s.addr, s.port, ls)
			continue
		}
		if l.PID != pid || l.Process != comm {
			t.Errorf("%s %s:%d owned by %d %q, want %d %q", s.proto, s.addr, s.port, l.PID, l.Process, pid, comm)
		}
	}
	for i := 1; i < len(ls); i++ {
		if a, b := ls[i-1], ls[i]; a.Port > b.Port || a.Port == b.Port && a.Proto > b.Proto || a == b {
			t.Errorf("not sorted/deduplicated at %d: %+v, %+v", i, a, b)
		}
	}

	if err := socks[0].close(); err != nil {
		t.Fatal(err)
	}
	ls, err = CollectPorts()
	if err != nil {
		t.Fatal(err)
	}
	if l := find(ls, socks[0]); l != nil {
		t.Errorf("closed listener still reported: %+v", *l)
	}
	for _, s := range socks[1:] {
		if find(ls, s) == nil {
			t.Errorf("%s %s:%d vanished", s.proto, s.addr, s.port)
		}
	}
}

func TestCollectHealth(t *testing.T) {
	h, err := CollectHealth()
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if h.AgentVersion != Version || h.Protocol != ProtocolVersion || h.UptimeSeconds <= 0 || len(h.BootID) != 36 ||
		h.Hostname != host || h.Load1 < 0 || h.MemAvailableBytes <= 0 {
		t.Errorf("implausible health: %+v", h)
	}
}
