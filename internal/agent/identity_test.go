package agent

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

var errRefused = errors.New("identity hook called outside its test")

// refusingIdentityHooks is what every test runs with unless it installs a
// fake guest: each system call refuses, and files live under root.
func refusingIdentityHooks(root string) identitySystem {
	return identitySystem{
		root:         root,
		proc:         filepath.Join(root, "proc"),
		sethostname:  func(string) error { return errRefused },
		linkDown:     func(string) error { return errRefused },
		setMAC:       func(string, net.HardwareAddr) error { return errRefused },
		linkUp:       func(string) error { return errRefused },
		addrs:        func(string) ([]netip.Prefix, error) { return nil, errRefused },
		addrDel:      func(string, netip.Prefix) error { return errRefused },
		addrAdd:      func(string, netip.Prefix) error { return errRefused },
		defaultRoute: func(string, netip.Addr) error { return errRefused },
		announce:     func(string, net.HardwareAddr, netip.Addr) error { return errRefused },
		run:          func(string, ...string) ([]byte, error) { return nil, errRefused },
		signal:       func(int, syscall.Signal) error { return errRefused },
		start:        func(string, []string, string) error { return errRefused },
	}
}

// hostsTarget is where the fake guest's /etc/hosts points, as banger's
// images point it at /run/hosts: an absolute link, which identity must
// follow under its root. A name no host has, so that a bug shows as a file
// the test finds outside its root rather than as a changed /run/hosts.
const hostsTarget = "/run/banger-identity-test-hosts"

// fakeGuest is a guest tree (a root with /etc, /run and a fake /proc) with
// every identity system call replaced by a recorder.
type fakeGuest struct {
	t          *testing.T
	root, proc string
	calls      []string
	fail       map[string]error // by call name: entropy, clock, sethostname, down, mac, up, addrs, addrdel, addradd, route, keygen, signal, start
	oldAddrs   []netip.Prefix
	relisten   bool // a signal (or start) makes the SSH server listen again
	listeners  []fakeSocket
	pubs       []string // the public keys the fake key tools made, in order
	nextInode  uint64
	nextFD     int
}

type fakeSocket struct {
	proto string // tcp or tcp6
	port  int
	inode uint64
	pid   int
}

func newFakeGuest(t *testing.T) *fakeGuest {
	t.Helper()
	root := t.TempDir()
	g := &fakeGuest{t: t, root: root, proc: filepath.Join(root, "proc"), fail: map[string]error{}, relisten: true, nextInode: 6000,
		oldAddrs: []netip.Prefix{netip.MustParsePrefix("172.16.0.4/24")}}
	g.write("/proc/sys/kernel/hostname", "parent\n")
	g.write("/etc/hostname", "parent\n")
	g.write("/etc/machine-id", "0123456789abcdef0123456789abcdef\n")
	g.write(hostsTarget, "127.0.0.1\tlocalhost\n127.0.1.1\tparent\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	g.link("/etc/hosts", hostsTarget)
	t.Cleanup(func() {
		if _, err := os.Lstat(hostsTarget); err == nil {
			t.Errorf("identity wrote %s outside its root", hostsTarget)
			os.Remove(hostsTarget)
		}
	})

	saved, savedRefresh := identityHooks, refreshHooks
	t.Cleanup(func() { identityHooks, refreshHooks = saved, savedRefresh })
	refreshHooks.addEntropy = func(b []byte) error { return g.call("entropy", "%d", len(b)) }
	refreshHooks.setClock = func(tm time.Time) (int64, error) {
		return 1234, g.call("clock", "%d", tm.UnixNano())
	}
	identityHooks = identitySystem{
		root:        root,
		proc:        g.proc,
		sethostname: func(name string) error { return g.call("sethostname", "%s", name) },
		linkDown:    func(iface string) error { return g.call("down", "%s", iface) },
		setMAC:      func(iface string, mac net.HardwareAddr) error { return g.call("mac", "%s %s", iface, mac) },
		linkUp:      func(iface string) error { return g.call("up", "%s", iface) },
		addrs: func(iface string) ([]netip.Prefix, error) {
			return g.oldAddrs, g.call("addrs", "%s", iface)
		},
		addrDel:      func(iface string, p netip.Prefix) error { return g.call("addrdel", "%s %s", iface, p) },
		addrAdd:      func(iface string, p netip.Prefix) error { return g.call("addradd", "%s %s", iface, p) },
		defaultRoute: func(iface string, gw netip.Addr) error { return g.call("route", "%s via %s", iface, gw) },
		announce: func(iface string, mac net.HardwareAddr, ip netip.Addr) error {
			return g.call("announce", "%s %s %s", iface, mac, ip)
		},
		run: g.keyTool,
		signal: func(pid int, sig syscall.Signal) error {
			if err := g.call("signal", "%d %v", pid, sig); err != nil {
				return err
			}
			g.serverRestarts(pid, sig)
			return nil
		},
		start: func(exe string, argv []string, logPath string) error {
			if err := g.call("start", "%s %q %s", exe, argv, logPath); err != nil {
				return err
			}
			if g.relisten {
				g.listen(fakeSocket{"tcp", sshPort, g.newInode(), 900})
			}
			return nil
		},
		listenWait: 2 * time.Second,
		poll:       time.Millisecond,
	}
	g.writeListeners()
	return g
}

// call records one system call and returns the error the test set for it.
func (g *fakeGuest) call(name, format string, args ...any) error {
	g.calls = append(g.calls, name+" "+fmt.Sprintf(format, args...))
	return g.fail[name]
}

func (g *fakeGuest) p(guestPath string) string { return filepath.Join(g.root, guestPath) }

func (g *fakeGuest) write(guestPath, content string) {
	g.t.Helper()
	if err := os.MkdirAll(filepath.Dir(g.p(guestPath)), 0o755); err != nil {
		g.t.Fatal(err)
	}
	if err := os.WriteFile(g.p(guestPath), []byte(content), 0o644); err != nil {
		g.t.Fatal(err)
	}
}

func (g *fakeGuest) read(guestPath string) string {
	b, err := os.ReadFile(g.p(guestPath))
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

func (g *fakeGuest) link(guestPath, target string) {
	g.t.Helper()
	if err := os.MkdirAll(filepath.Dir(g.p(guestPath)), 0o755); err != nil {
		g.t.Fatal(err)
	}
	if err := os.Symlink(target, g.p(guestPath)); err != nil {
		g.t.Fatal(err)
	}
}

func (g *fakeGuest) newInode() uint64 { g.nextInode++; return g.nextInode }

// process adds /proc/PID with its comm, command line, parent and sockets.
func (g *fakeGuest) process(pid int, comm string, argv []string, ppid int) {
	g.write(fmt.Sprintf("/proc/%d/comm", pid), comm+"\n")
	g.write(fmt.Sprintf("/proc/%d/cmdline", pid), strings.Join(argv, "\x00")+"\x00")
	g.write(fmt.Sprintf("/proc/%d/stat", pid), fmt.Sprintf("%d (%s) S %d 1 1 0 -1", pid, comm, ppid))
	os.MkdirAll(g.p(fmt.Sprintf("/proc/%d/fd", pid)), 0o755)
}

// listen adds a listening socket held by its pid.
func (g *fakeGuest) listen(s fakeSocket) {
	g.listeners = append(g.listeners, s)
	g.nextFD++
	g.link(fmt.Sprintf("/proc/%d/fd/%d", s.pid, 10+g.nextFD), fmt.Sprintf("socket:[%d]", s.inode))
	g.writeListeners()
}

func (g *fakeGuest) writeListeners() {
	for _, proto := range []string{"tcp", "tcp6"} {
		var b strings.Builder
		b.WriteString("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n")
		for i, s := range g.listeners {
			if s.proto != proto {
				continue
			}
			zero := "00000000"
			if proto == "tcp6" {
				zero = strings.Repeat("0", 32)
			}
			fmt.Fprintf(&b, "%4d: %s:%04X %s:0000 0A 00000000:00000000 00:00000000 00000000     0        0 %d 1 0000000000000000 100 0 0 10 0\n",
				i, zero, s.port, zero, s.inode)
		}
		g.write("/proc/net/"+proto, b.String())
	}
}

// serverRestarts plays the SSH server's side of a signal: sshd closes its
// listening sockets on SIGHUP and opens new ones; dropbear closes its
// sockets on SIGTERM and stays down; busybox init respawns /etc/banger/sshd
// when it ends, which starts a new dropbear. Nothing listens again when the
// test says so (relisten false).
func (g *fakeGuest) serverRestarts(pid int, sig syscall.Signal) {
	switch {
	case sig == syscall.SIGHUP:
		for _, s := range g.closeSockets(pid) {
			if g.relisten {
				g.listen(fakeSocket{s.proto, s.port, g.newInode(), pid})
			}
		}
	case g.comm(pid) == "dropbear":
		g.closeSockets(pid)
		// A wrapper that loops starts dropbear again itself when it
		// finds the marker.
		if _, err := os.Lstat(g.p(sshReloadMarker)); err == nil && g.relisten {
			os.Remove(g.p(sshReloadMarker))
			g.listen(fakeSocket{"tcp", sshPort, g.newInode(), 1301})
		}
	case strings.Contains(g.read(fmt.Sprintf("/proc/%d/cmdline", pid)), "/etc/banger/sshd"):
		if g.relisten {
			g.listen(fakeSocket{"tcp", sshPort, g.newInode(), 1300})
		}
	}
}

// closeSockets closes pid's listening sockets and returns them.
func (g *fakeGuest) closeSockets(pid int) []fakeSocket {
	var kept, closed []fakeSocket
	for _, s := range g.listeners {
		if s.pid == pid {
			closed = append(closed, s)
		} else {
			kept = append(kept, s)
		}
	}
	g.listeners = kept
	g.writeListeners()
	return closed
}

func (g *fakeGuest) comm(pid int) string {
	return strings.TrimSpace(g.read(fmt.Sprintf("/proc/%d/comm", pid)))
}

// keyTool plays ssh-keygen and dropbearkey: it makes a real key of the type
// asked (so the public half parses), writes the files where the tool would
// and prints what dropbearkey prints.
func (g *fakeGuest) keyTool(name string, args ...string) ([]byte, error) {
	rel := make([]string, len(args))
	for i, a := range args {
		rel[i] = strings.TrimPrefix(a, g.root)
	}
	if err := g.call("keygen", "%s %s", name, strings.Join(rel, " ")); err != nil {
		return nil, err
	}
	typ, path := "", ""
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-t":
			typ = args[i+1]
		case "-f":
			path = args[i+1]
		}
	}
	var pub ssh.PublicKey
	switch typ {
	case "ed25519":
		k, _, _ := ed25519.GenerateKey(rand.Reader)
		pub, _ = ssh.NewPublicKey(k)
	case "ecdsa":
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		pub, _ = ssh.NewPublicKey(&k.PublicKey)
	default:
		return nil, fmt.Errorf("fake %s: no type %q", name, typ)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
	g.pubs = append(g.pubs, line)
	if _, err := os.Stat(path); err == nil {
		return nil, fmt.Errorf("fake %s: %s exists", name, path)
	}
	if err := os.WriteFile(path, []byte("NEW PRIVATE "+typ), 0o600); err != nil {
		return nil, err
	}
	if name == "ssh-keygen" {
		return nil, os.WriteFile(path+".pub", []byte(line+" root@child\n"), 0o644)
	}
	return []byte("Public key portion is:\n" + line + " root@parent\nFingerprint: sha256!! xx\n"), nil
}

// openSSH makes the guest a Debian one: sshd (pid 100, its pidfile) on
// port 22 over IPv4 and IPv6, old ed25519, ecdsa and dsa keys, and a web
// server on 8080 that identity must leave alone.
func (g *fakeGuest) openSSH() {
	for _, typ := range []string{"ed25519", "ecdsa", "dsa"} {
		g.write("/etc/ssh/ssh_host_"+typ+"_key", "OLD PRIVATE "+typ)
		g.write("/etc/ssh/ssh_host_"+typ+"_key.pub", "OLD PUBLIC "+typ)
	}
	g.write("/etc/ssh/sshd_config", "")
	g.write("/run/sshd.pid", "100\n")
	g.process(100, "sshd", []string{"sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"}, 1)
	g.process(200, "python3", []string{"python3", "-m", "http.server", "8080"}, 1)
	g.listen(fakeSocket{"tcp", sshPort, 5000, 100})
	g.listen(fakeSocket{"tcp6", sshPort, 5001, 100})
	g.listen(fakeSocket{"tcp", 8080, 5002, 200})
}

// dropbear makes the guest the tiny one: dropbear (pid 300) run by
// /etc/banger/sshd (pid 299) with the keys rc.boot listed, or, respawned
// false, run directly by an init that does not restart it (the OCI guest
// kit's).
func (g *fakeGuest) dropbear(respawned bool) {
	keys := []string{"/etc/dropbear/dropbear_ed25519_host_key", "/etc/dropbear/dropbear_ecdsa_host_key"}
	for _, k := range keys {
		g.write(k, "OLD DROPBEAR KEY")
	}
	g.write("/run/banger/hostkeys", strings.Join(keys, "\n")+"\n")
	if respawned {
		g.process(299, "sh", []string{"/bin/sh", "/etc/banger/sshd"}, 1)
	} else {
		g.process(299, "init", []string{"/bin/sh", "/.banger/init"}, 0)
	}
	g.process(300, "dropbear", []string{"/usr/sbin/dropbear", "-F", "-E", "-s", "-p", "22", "-r", keys[0], "-r" + keys[1]}, 299)
	g.link("/proc/300/exe", "/usr/sbin/dropbear")
	g.write("/run/dropbear.log", "")
	g.link("/proc/300/fd/2", "/run/dropbear.log")
	g.listen(fakeSocket{"tcp", sshPort, 5000, 300})
}

func validIdentityArgs() IdentityArgs {
	ent := make([]byte, 64)
	for i := range ent {
		ent[i] = byte(i)
	}
	return IdentityArgs{
		TimeUnixNano: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC).UnixNano(),
		Entropy:      ent,
		MachineID:    "5f0c6d8e2b3a4c1d9e8f7a6b5c4d3e2f",
		Hostname:     "child",
		MAC:          "02:fc:00:00:00:05",
		Address:      "172.16.0.5/24",
		Gateway:      "172.16.0.1",
	}
}

// wantCalls is the system calls of a successful identity up to the SSH
// server, in their order.
func wantCallsUntilSSH(a IdentityArgs) []string {
	return []string{
		"entropy 64",
		fmt.Sprintf("clock %d", a.TimeUnixNano),
		"sethostname child",
		"down eth0",
		"mac eth0 02:fc:00:00:00:05",
		"up eth0",
		"addrs eth0",
		"addrdel eth0 172.16.0.4/24",
		"addradd eth0 172.16.0.5/24",
		"route eth0 via 172.16.0.1",
		"announce eth0 02:fc:00:00:00:05 172.16.0.5",
	}
}

func checkCalls(t *testing.T, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("calls:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// TestIdentityOpenSSH: a Debian guest. Every step runs in order; the files
// are rewritten (through /etc/hosts's absolute link, inside the root);
// ed25519 and ecdsa keys are made again with ssh-keygen, the stale DSA key
// is removed; sshd gets SIGHUP and the op returns once it listens on new
// sockets; the answer carries the new public keys.
func TestIdentityOpenSSH(t *testing.T) {
	g := newFakeGuest(t)
	g.openSSH()
	g.write("/var/lib/dbus/machine-id", "0123456789abcdef0123456789abcdef\n")
	a := validIdentityArgs()
	r, err := identity(a)
	if err != nil {
		t.Fatal(err)
	}
	checkCalls(t, g.calls, append(wantCallsUntilSSH(a),
		"keygen ssh-keygen -q -t ed25519 -N  -C root@child -f /etc/ssh/ssh_host_ed25519_key.banger-new",
		"keygen ssh-keygen -q -t ecdsa -N  -C root@child -f /etc/ssh/ssh_host_ecdsa_key.banger-new",
		"signal 100 hangup",
	))
	if r.ClockStepNanos != 1234 || !slices.Equal(r.HostKeys, g.pubs) || len(r.HostKeys) != 2 {
		t.Errorf("result %+v, want the keys %q", r, g.pubs)
	}
	for _, k := range r.HostKeys {
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil || strings.Count(k, " ") != 1 {
			t.Errorf("host key %q: %v", k, err)
		}
	}
	for path, want := range map[string]string{
		"/etc/machine-id":                 a.MachineID + "\n",
		"/var/lib/dbus/machine-id":        a.MachineID + "\n",
		"/etc/hostname":                   "child\n",
		hostsTarget:                       "127.0.0.1\tlocalhost\n127.0.1.1\tchild\n::1\tlocalhost ip6-localhost ip6-loopback\n",
		"/etc/ssh/ssh_host_ed25519_key":   "NEW PRIVATE ed25519",
		"/etc/ssh/ssh_host_ecdsa_key":     "NEW PRIVATE ecdsa",
		"/etc/ssh/ssh_host_ecdsa_key.pub": g.pubs[1] + " root@child\n",
		"/etc/ssh/ssh_host_dsa_key":       "<open " + g.p("/etc/ssh/ssh_host_dsa_key") + ": no such file or directory>",
		"/etc/ssh/ssh_host_dsa_key.pub":   "<open " + g.p("/etc/ssh/ssh_host_dsa_key.pub") + ": no such file or directory>",
	} {
		if got := g.read(path); got != want {
			t.Errorf("%s = %q, want %q", path, got, want)
		}
	}
	if fi, err := os.Lstat(g.p("/etc/hosts")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("/etc/hosts is no longer a link: %v", err)
	}
	if left, _ := filepath.Glob(g.p("/etc/ssh/*banger-new*")); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// TestIdentityDropbearTiny: the tiny guest. dropbear's keys (its -r
// arguments) are made again with dropbearkey; dropbear is ended with
// SIGTERM, then its wrapper /etc/banger/sshd (rather than waiting out its
// 1 s sleep), and busybox init starts them again, so identity starts
// nothing itself. No dbus machine-id: none is made.
func TestIdentityDropbearTiny(t *testing.T) {
	g := newFakeGuest(t)
	g.dropbear(true)
	a := validIdentityArgs()
	a.Interface = "eth1"
	g.oldAddrs = nil
	r, err := identity(a)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{}
	for _, c := range wantCallsUntilSSH(a) {
		if !strings.HasPrefix(c, "addrdel") {
			want = append(want, strings.ReplaceAll(c, "eth0", "eth1"))
		}
	}
	checkCalls(t, g.calls, append(want,
		"keygen dropbearkey -t ed25519 -f /etc/dropbear/dropbear_ed25519_host_key.banger-new",
		"keygen dropbearkey -t ecdsa -f /etc/dropbear/dropbear_ecdsa_host_key.banger-new",
		"signal 300 terminated",
		"signal 299 terminated",
	))
	if !slices.Equal(r.HostKeys, g.pubs) || len(r.HostKeys) != 2 {
		t.Errorf("host keys %q, want %q", r.HostKeys, g.pubs)
	}
	if got := g.read("/etc/dropbear/dropbear_ecdsa_host_key"); got != "NEW PRIVATE ecdsa" {
		t.Errorf("ecdsa key = %q", got)
	}
	if _, err := os.Lstat(g.p("/var/lib/dbus/machine-id")); err == nil {
		t.Error("a dbus machine-id was made")
	}
	if got := g.read("/etc/machine-id"); got != a.MachineID+"\n" {
		t.Errorf("machine-id = %q", got)
	}
}

// TestIdentityDropbearWrapperLoops: a tiny image whose /etc/banger/sshd
// starts dropbear again itself when it finds the reload marker: identity
// leaves the marker and ends dropbear only, so busybox init's respawn (and
// its one-second sleep) is not waited for.
func TestIdentityDropbearWrapperLoops(t *testing.T) {
	g := newFakeGuest(t)
	g.dropbear(true)
	g.write("/etc/banger/sshd", "#!/bin/sh\nwhile :; do dropbear; [ -e "+sshReloadMarker+" ] && continue; exit; done\n")
	if _, err := identity(validIdentityArgs()); err != nil {
		t.Fatal(err)
	}
	if last := g.calls[len(g.calls)-1]; last != "signal 300 terminated" {
		t.Fatalf("last call %q: the looping wrapper was signalled (or dropbear not)", last)
	}
	if _, err := os.Lstat(g.p(sshReloadMarker)); err == nil {
		t.Fatal("the marker was left for a dropbear that never read it")
	}
}

// TestIdentityDropbearNotRespawned: a dropbear that nothing restarts (an
// OCI image's, under the guest kit's init) is ended, and once its port is
// free started again by identity with its own command line and log.
func TestIdentityDropbearNotRespawned(t *testing.T) {
	g := newFakeGuest(t)
	g.dropbear(false)
	if _, err := identity(validIdentityArgs()); err != nil {
		t.Fatal(err)
	}
	tail := g.calls[len(g.calls)-2:]
	checkCalls(t, tail, []string{
		"signal 300 terminated",
		`start /usr/sbin/dropbear ["/usr/sbin/dropbear" "-F" "-E" "-s" "-p" "22" "-r" "/etc/dropbear/dropbear_ed25519_host_key" "-r/etc/dropbear/dropbear_ecdsa_host_key"] /run/dropbear.log`,
	})
}

// TestIdentityNoSSHRunning: with no SSH server running, the installed one's
// keys are made again and nothing is signalled.
func TestIdentityNoSSHRunning(t *testing.T) {
	g := newFakeGuest(t)
	g.write("/usr/sbin/sshd", "")
	r, err := identity(validIdentityArgs())
	if err != nil {
		t.Fatal(err)
	}
	if last := g.calls[len(g.calls)-1]; !strings.HasPrefix(last, "keygen ssh-keygen -q -t ecdsa") || len(r.HostKeys) != 2 {
		t.Errorf("last call %q, host keys %q", last, r.HostKeys)
	}

	newFakeGuest(t) // nothing installed
	_, err = identity(validIdentityArgs())
	if want := "identity: ssh host keys: no SSH server: nothing listens on port 22 and neither sshd nor dropbear is installed"; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
}

// TestIdentityDbusLink: a /var/lib/dbus/machine-id that links to
// /etc/machine-id stays a link.
func TestIdentityDbusLink(t *testing.T) {
	for _, target := range []string{"/etc/machine-id", "../../../etc/machine-id"} {
		g := newFakeGuest(t)
		g.openSSH()
		g.link("/var/lib/dbus/machine-id", target)
		a := validIdentityArgs()
		if _, err := identity(a); err != nil {
			t.Fatal(err)
		}
		if l, err := os.Readlink(g.p("/var/lib/dbus/machine-id")); err != nil || l != target {
			t.Errorf("%s: dbus machine-id is now %q, %v", target, l, err)
		}
		if got := g.read("/etc/machine-id"); got != a.MachineID+"\n" {
			t.Errorf("machine-id = %q", got)
		}
	}
}

// TestIdentityFailures: a failing step ends the op with an error naming
// it, and no later step runs.
func TestIdentityFailures(t *testing.T) {
	boom := errors.New("boom")
	a := validIdentityArgs()
	all := wantCallsUntilSSH(a)
	upTo := func(prefix string) []string {
		for i, c := range all {
			if strings.HasPrefix(c, prefix) {
				return all[:i+1]
			}
		}
		panic(prefix)
	}
	for _, tc := range []struct {
		fail  string
		want  string
		calls []string
	}{
		{"entropy", "identity: entropy: boom", upTo("entropy")},
		{"clock", "identity: clock: boom", upTo("clock")},
		{"sethostname", "identity: hostname: sethostname: boom", upTo("sethostname")},
		{"down", "identity: network: eth0 down: boom", upTo("down")},
		// The link comes back up (with its old MAC) rather than staying down.
		{"mac", "identity: network: eth0 MAC 02:fc:00:00:00:05: boom", append(upTo("mac"), "up eth0")},
		{"addrs", "identity: network: eth0 addresses: boom", upTo("addrs")},
		{"addrdel", "identity: network: eth0: remove 172.16.0.4/24: boom", upTo("addrdel")},
		{"addradd", "identity: network: eth0: add 172.16.0.5/24: boom", upTo("addradd")},
		{"route", "identity: network: eth0: default route via 172.16.0.1: boom", upTo("route")},
		// The announcement is best effort.
		{"announce", "", append(slices.Clone(all), "keygen ssh-keygen -q -t ed25519 -N  -C root@child -f /etc/ssh/ssh_host_ed25519_key.banger-new",
			"keygen ssh-keygen -q -t ecdsa -N  -C root@child -f /etc/ssh/ssh_host_ecdsa_key.banger-new", "signal 100 hangup")},
		{"keygen", "identity: ssh host keys: boom", append(slices.Clone(all), "keygen ssh-keygen -q -t ed25519 -N  -C root@child -f /etc/ssh/ssh_host_ed25519_key.banger-new")},
		{"signal", "identity: ssh host keys: SIGHUP sshd (pid 100): boom", nil},
	} {
		g := newFakeGuest(t)
		g.openSSH()
		g.fail[tc.fail] = boom
		_, err := identity(a)
		if (tc.want == "") != (err == nil) || err != nil && err.Error() != tc.want {
			t.Errorf("%s fails: err = %v, want %q", tc.fail, err, tc.want)
		}
		if tc.calls != nil {
			checkCalls(t, g.calls, tc.calls)
		}
		if tc.fail == "keygen" || tc.fail == "entropy" {
			// The old keys stay, nothing half-made is left.
			if got := g.read("/etc/ssh/ssh_host_ed25519_key"); got != "OLD PRIVATE ed25519" {
				t.Errorf("%s fails: ed25519 key = %q", tc.fail, got)
			}
			if left, _ := filepath.Glob(g.p("/etc/ssh/*banger-new*")); len(left) > 0 {
				t.Errorf("%s fails: left behind %v", tc.fail, left)
			}
		}
		if tc.fail == "entropy" && g.read("/etc/machine-id") != "0123456789abcdef0123456789abcdef\n" {
			t.Error("the machine-id changed after the entropy failed")
		}
	}
}

// TestIdentitySSHDoesNotComeBack: a server that does not listen again
// within the wait fails the op.
func TestIdentitySSHDoesNotComeBack(t *testing.T) {
	g := newFakeGuest(t)
	g.openSSH()
	g.relisten = false
	identityHooks.listenWait = 50 * time.Millisecond
	_, err := identity(validIdentityArgs())
	if want := "identity: ssh host keys: waited 50ms for openssh to listen again"; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}

	g = newFakeGuest(t)
	g.dropbear(true)
	g.relisten = false
	identityHooks.listenWait = 50 * time.Millisecond
	_, err = identity(validIdentityArgs())
	if want := "identity: ssh host keys: waited 50ms for dropbear to listen again"; err == nil || err.Error() != want {
		t.Errorf("tiny: err = %v, want %s", err, want)
	}
}

// TestIdentityPort22Taken: something other than sshd or dropbear on port
// 22 is refused before any key is made.
func TestIdentityPort22Taken(t *testing.T) {
	g := newFakeGuest(t)
	g.process(400, "nginx", []string{"nginx"}, 1)
	g.listen(fakeSocket{"tcp", sshPort, 5000, 400})
	_, err := identity(validIdentityArgs())
	if want := `identity: ssh host keys: port 22 is held by "nginx" (pid 400), neither sshd nor dropbear`; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
	if slices.ContainsFunc(g.calls, func(c string) bool { return strings.HasPrefix(c, "keygen") }) {
		t.Errorf("keys were made: %q", g.calls)
	}
}

// TestIdentityArgs: every field out of shape is refused with an error
// naming it, before anything changes in the guest.
func TestIdentityArgs(t *testing.T) {
	for _, tc := range []struct {
		edit func(*IdentityArgs)
		want string
	}{
		{func(a *IdentityArgs) { a.TimeUnixNano = 1000 }, "time_unix_nano: 1970-01-01T00:00:00Z is before 2024-01-01"},
		{func(a *IdentityArgs) { a.Entropy = a.Entropy[:31] }, "entropy: must be 32-512 bytes, got 31"},
		{func(a *IdentityArgs) { a.Entropy = make([]byte, 513) }, "entropy: must be 32-512 bytes, got 513"},
		{func(a *IdentityArgs) { a.MachineID = "" }, `machine_id: "" is not 32 lowercase hex characters`},
		{func(a *IdentityArgs) { a.MachineID = "5F0C6D8E2B3A4C1D9E8F7A6B5C4D3E2F" }, `machine_id: "5F0C6D8E2B3A4C1D9E8F7A6B5C4D3E2F" is not 32 lowercase hex characters`},
		{func(a *IdentityArgs) { a.MachineID = "5f0c6d8e-2b3a-4c1d-9e8f-7a6b5c4d3e2f" }, "machine_id: "},
		{func(a *IdentityArgs) { a.MachineID = strings.Repeat("0", 32) }, "machine_id: all zeros is not a machine ID"},
		{func(a *IdentityArgs) { a.Hostname = "" }, `hostname: "" is empty`},
		{func(a *IdentityArgs) { a.Hostname = strings.Repeat("a", 64) }, "hostname: \"" + strings.Repeat("a", 64) + "\" is 64 characters long, more than 63"},
		{func(a *IdentityArgs) { a.Hostname = strings.Repeat("a", 70) }, "hostname: \"" + strings.Repeat("a", 61) + "…\" is 70 characters long, more than 63"},
		{func(a *IdentityArgs) { a.Hostname = "-child" }, `hostname: "-child" has a label starting or ending with '-'`},
		{func(a *IdentityArgs) { a.Hostname = "child..dev" }, `hostname: "child..dev" has an empty label`},
		{func(a *IdentityArgs) { a.Hostname = "child_1" }, `hostname: "child_1" may hold only letters, digits, '-' and dots`},
		{func(a *IdentityArgs) { a.Hostname = "child\n127.0.0.1 evil" }, `hostname: "child?127.0.0.1 evil" may hold only`},
		{func(a *IdentityArgs) { a.MAC = "" }, `mac: "" is not a MAC address`},
		{func(a *IdentityArgs) { a.MAC = "02:fc:00:00:00:05:06:07" }, `mac: "02:fc:00:00:00:05:06:07" is not a 6-byte Ethernet address`},
		{func(a *IdentityArgs) { a.MAC = "03:fc:00:00:00:05" }, "mac: 03:fc:00:00:00:05 is a multicast address"},
		{func(a *IdentityArgs) { a.MAC = "ff:ff:ff:ff:ff:ff" }, "mac: ff:ff:ff:ff:ff:ff is a multicast address"},
		{func(a *IdentityArgs) { a.MAC = "00:00:00:00:00:00" }, "mac: 00:00:00:00:00:00 is not a usable address"},
		{func(a *IdentityArgs) { a.Address = "172.16.0.5" }, `address: "172.16.0.5" is not an IPv4 CIDR (like 172.16.0.5/24)`},
		{func(a *IdentityArgs) { a.Address = "fd00::5/64" }, `address: "fd00::5/64" is not an IPv4 CIDR`},
		{func(a *IdentityArgs) { a.Address = "172.16.0.5/31" }, "address: 172.16.0.5/31: the prefix length must be 1-30"},
		{func(a *IdentityArgs) { a.Address = "172.16.0.5/0" }, "address: 172.16.0.5/0: the prefix length must be 1-30"},
		{func(a *IdentityArgs) { a.Address = "127.0.0.5/8" }, "address: 127.0.0.5/8 is not a unicast address"},
		{func(a *IdentityArgs) { a.Address = "172.16.0.0/24" }, "address: 172.16.0.0/24 is the network or broadcast address of its subnet"},
		{func(a *IdentityArgs) { a.Address = "172.16.0.255/24" }, "address: 172.16.0.255/24 is the network or broadcast address"},
		{func(a *IdentityArgs) { a.Address = "172.16.3.255/22" }, "address: 172.16.3.255/22 is the network or broadcast address"},
		{func(a *IdentityArgs) { a.Gateway = "" }, `gateway: "" is not an IPv4 address`},
		{func(a *IdentityArgs) { a.Gateway = "::ffff:172.16.0.1" }, `gateway: "::ffff:172.16.0.1" is not an IPv4 address`},
		{func(a *IdentityArgs) { a.Gateway = "172.16.1.1" }, "gateway: 172.16.1.1 is outside the address's subnet 172.16.0.0/24"},
		{func(a *IdentityArgs) { a.Gateway = "172.16.0.5" }, "gateway: 172.16.0.5 is the address itself"},
		{func(a *IdentityArgs) { a.Gateway = "172.16.0.255" }, "gateway: 172.16.0.255 is the network or broadcast address of 172.16.0.0/24"},
		{func(a *IdentityArgs) { a.Interface = "eth0/../lo" }, `interface: "eth0/../lo" is not a network interface name`},
		{func(a *IdentityArgs) { a.Interface = "a-very-long-name0" }, `interface: "a-very-long-name0" is not a network interface name`},
		{func(a *IdentityArgs) { a.Interface = ".." }, `interface: ".." is not a network interface name`},
	} {
		g := newFakeGuest(t)
		g.openSSH()
		a := validIdentityArgs()
		tc.edit(&a)
		_, err := identity(a)
		if err == nil || !strings.HasPrefix(err.Error(), "identity: "+tc.want) {
			t.Errorf("err = %v, want %s", err, "identity: "+tc.want)
		}
		if len(g.calls) > 0 {
			t.Errorf("%s: calls %q", tc.want, g.calls)
		}
	}
	// Edges that are fine.
	for _, edit := range []func(*IdentityArgs){
		func(a *IdentityArgs) { a.Hostname = "Child-1.dev.example" },
		func(a *IdentityArgs) { a.Hostname = strings.Repeat("a", 63) },
		func(a *IdentityArgs) { a.MAC = "02-FC-00-00-00-05" },
		func(a *IdentityArgs) { a.Address, a.Gateway = "10.0.0.2/30", "10.0.0.1" },
		func(a *IdentityArgs) { a.Entropy = make([]byte, 32) },
		func(a *IdentityArgs) { a.Interface = "ens3" },
	} {
		a := validIdentityArgs()
		edit(&a)
		if _, err := checkIdentityArgs(a); err != nil {
			t.Errorf("%+v: %v", a, err)
		}
	}
}

// TestIdentityRequest: through the protocol, identity needs version 3 and
// refuses unknown argument fields.
func TestIdentityRequest(t *testing.T) {
	g := newFakeGuest(t)
	g.openSSH()
	args, _ := json.Marshal(validIdentityArgs())
	resp := handle([]byte(`{"v":3,"id":"i","op":"identity","args":` + string(args) + `}`))
	var r IdentityResult
	if !resp.OK || resp.V != 3 || json.Unmarshal(resp.Result, &r) != nil || len(r.HostKeys) != 2 {
		t.Fatalf("identity: %+v %s", resp, resp.Result)
	}
	for _, tc := range []struct{ req, want string }{
		{`{"v":2,"id":"i","op":"identity","args":` + string(args) + `}`, "op identity needs protocol version 3"},
		{`{"v":3,"id":"i","op":"identity","args":{"hostname":"x","shell":"rm -rf /"}}`, `identity: bad args: json: unknown field "shell"`},
		{`{"v":3,"id":"i","op":"identity"}`, "identity: bad args: no args"},
		{`{"v":3,"id":"i","op":"identity","args":{"host_keys":[{"type":"ed25519","private":"x","public":"y"}]}}`, "identity: host_keys needs protocol version 4"},
		{`{"v":3,"id":"i","op":"identity","args":[1]}`, "identity: bad args: json: cannot unmarshal array"},
		{`{"v":3,"id":"i","op":"identity","args":{"time_unix_nano":1777636800000000000,"entropy":"AAAA"}}`, "identity: entropy: must be 32-512 bytes, got 3"},
	} {
		resp := handle([]byte(tc.req))
		if resp.OK || !strings.HasPrefix(resp.Error, tc.want) {
			t.Errorf("%s: %+v, want %q", tc.req, resp, tc.want)
		}
	}
}

func TestRenameInHosts(t *testing.T) {
	for _, tc := range []struct{ in, out string }{
		{"127.0.1.1\tparent\n", "127.0.1.1\tchild\n"},
		{"127.0.0.1 localhost\n127.0.1.1   parent.dev.example parent other # mine\n10.0.0.1 parent\n",
			"127.0.0.1 localhost\n127.0.1.1\tchild.dev.example child other # mine\n10.0.0.1 parent\n"},
		{"127.0.1.1 parentx\n", "127.0.1.1 parentx\n"},
		{"127.0.1.1 parent", "127.0.1.1\tchild"},
		{"# 127.0.1.1 parent\n", "# 127.0.1.1 parent\n"},
	} {
		out, changed := renameInHosts([]byte(tc.in), "parent", "child")
		if string(out) != tc.out || changed != (tc.in != tc.out) {
			t.Errorf("%q: got %q (changed %v), want %q", tc.in, out, changed, tc.out)
		}
	}
	if _, changed := renameInHosts([]byte("127.0.1.1 x\n"), "", "child"); changed {
		t.Error("an empty old name changed the file")
	}
}

func TestPubKeyLine(t *testing.T) {
	for in, want := range map[string]string{
		"Public key portion is:\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5 root@banger\nFingerprint: sha256!! x\n": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5",
		"ecdsa-sha2-nistp256 AAAAE2VjZHNh root@child\n":                                                   "ecdsa-sha2-nistp256 AAAAE2VjZHNh",
		"Will output 256 bit ed25519 secret key to 'x'\nssh-ed25519 not-base64!\n":                        "",
		"":              "",
		"ssh-ed25519\n": "",
		"rsa-sha2-512 AAAA\nssh-rsa AAAAB3NzaC1yc2E=\n": "ssh-rsa AAAAB3NzaC1yc2E=",
	} {
		if got := pubKeyLine(in); got != want {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
}

func TestProcPPid(t *testing.T) {
	for in, want := range map[string]int{
		"300 (dropbear) S 299 300 300 0 -1": 299,
		"7 (a) b (c)) R 1 7 7 0 -1":         1,
		"":                                  0,
		"12 (x)":                            0,
	} {
		if got := procPPid(in); got != want {
			t.Errorf("%q: %d, want %d", in, got, want)
		}
	}
}

// debian12 makes the fake sshd the one Debian 12 runs (OpenSSH 9.2): its
// binary is /usr/sbin/sshd and no sshd-session is installed, so it
// re-executes for every connection and reads its host keys from disk.
func (g *fakeGuest) debian12() {
	g.openSSH()
	g.write("/usr/sbin/sshd", "")
	g.link("/proc/100/exe", "/usr/sbin/sshd")
}

// TestIdentityOpenSSHHostKeys: keys the host made are written (0600, their
// .pub beside them) instead of running ssh-keygen, and the answer carries
// them. An OpenSSH that reads its keys for every connection (9.2) is not
// signalled; one that does not (an sshd-session installed, where Debian
// and upstream put it or beside sshd; or run with -r) gets SIGHUP. Without
// host keys, ssh-keygen makes them as before.
func TestIdentityOpenSSHHostKeys(t *testing.T) {
	for _, tc := range []struct {
		name   string
		setup  func(g *fakeGuest)
		nokeys bool
		reload bool
	}{
		{"openssh 9.2", func(*fakeGuest) {}, false, false},
		{"openssh 9.2, keys made in the guest", func(*fakeGuest) {}, true, false},
		{"sshd-session installed", func(g *fakeGuest) { g.write("/usr/lib/openssh/sshd-session", "") }, false, true},
		{"sshd-session upstream", func(g *fakeGuest) { g.write("/usr/libexec/sshd-session", "") }, false, true},
		{"sshd-session beside sshd", func(g *fakeGuest) { g.write("/usr/sbin/sshd-session", "") }, false, true},
		{"sshd -r", func(g *fakeGuest) {
			g.process(100, "sshd", []string{"sshd: /usr/sbin/sshd -Dr [listener] 0 of 10-100 startups"}, 1)
		}, false, true},
		{"sshd's binary unknown", func(g *fakeGuest) { os.Remove(g.p("/proc/100/exe")) }, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGuest(t)
			g.debian12()
			tc.setup(g)
			a := validIdentityArgs()
			keys, err := NewHostKeys()
			if err != nil {
				t.Fatal(err)
			}
			if !tc.nokeys {
				a.HostKeys = keys
			}
			r, err := identity(a)
			if err != nil {
				t.Fatal(err)
			}
			want := wantCallsUntilSSH(a)
			if tc.nokeys {
				want = append(want,
					"keygen ssh-keygen -q -t ed25519 -N  -C root@child -f /etc/ssh/ssh_host_ed25519_key.banger-new",
					"keygen ssh-keygen -q -t ecdsa -N  -C root@child -f /etc/ssh/ssh_host_ecdsa_key.banger-new")
				keys = []HostKeyPair{{Public: g.pubs[0], Private: "NEW PRIVATE ed25519"}, {Public: g.pubs[1], Private: "NEW PRIVATE ecdsa"}}
			}
			if tc.reload {
				want = append(want, "signal 100 hangup")
			}
			checkCalls(t, g.calls, want)
			if !slices.Equal(r.HostKeys, []string{keys[0].Public, keys[1].Public}) {
				t.Errorf("host keys %q, want those given", r.HostKeys)
			}
			for i, typ := range []string{"ed25519", "ecdsa"} {
				path := "/etc/ssh/ssh_host_" + typ + "_key"
				if got := g.read(path); got != keys[i].Private {
					t.Errorf("%s = %q", path, got)
				}
				if got := g.read(path + ".pub"); got != keys[i].Public+" root@child\n" {
					t.Errorf("%s.pub = %q", path, got)
				}
				if fi, err := os.Stat(g.p(path)); err != nil || fi.Mode().Perm()&0o077 != 0 {
					t.Errorf("%s: %v %v, want no access but root's", path, fi.Mode(), err)
				}
			}
			if got := g.read("/etc/ssh/ssh_host_dsa_key"); !strings.Contains(got, "no such file") {
				t.Errorf("the stale DSA key stayed: %q", got)
			}
			if left, _ := filepath.Glob(g.p("/etc/ssh/*banger-new*")); len(left) > 0 {
				t.Errorf("left behind: %v", left)
			}
		})
	}
}

// TestIdentityDropbearIgnoresHostKeys: dropbear reads its own key format,
// so its keys are made with dropbearkey even when the host sent some.
func TestIdentityDropbearIgnoresHostKeys(t *testing.T) {
	g := newFakeGuest(t)
	g.dropbear(true)
	a := validIdentityArgs()
	a.HostKeys, _ = NewHostKeys()
	r, err := identity(a)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(slices.DeleteFunc(slices.Clone(g.calls), func(c string) bool { return !strings.HasPrefix(c, "keygen dropbearkey") })); n != 2 {
		t.Errorf("calls %q: want two dropbearkey runs", g.calls)
	}
	if !slices.Equal(r.HostKeys, g.pubs) {
		t.Errorf("host keys %q, want dropbearkey's %q", r.HostKeys, g.pubs)
	}
}

// TestIdentityHostKeyArgs: a host key out of shape is refused, naming it,
// before anything changes in the guest.
func TestIdentityHostKeyArgs(t *testing.T) {
	hk, err := NewHostKeys()
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewHostKeys()
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	enc, err := ssh.MarshalPrivateKeyWithPassphrase(edKey, "", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	edPub, _ := ssh.NewPublicKey(edKey.Public())
	encrypted := HostKeyPair{Type: "ed25519", Private: string(pem.EncodeToMemory(enc)), Public: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(edPub)))}
	nine := make([]HostKeyPair, 9)
	for i := range nine {
		nine[i] = hk[0]
	}
	for _, tc := range []struct {
		keys []HostKeyPair
		want string
	}{
		{nine, "host_keys: 9 keys, more than 8"},
		{[]HostKeyPair{{Type: "rsa", Private: hk[0].Private, Public: hk[0].Public}}, `host_keys[0]: type "rsa" is not ed25519 or ecdsa`},
		{[]HostKeyPair{hk[0], hk[1], other[0]}, `host_keys[2]: a second "ed25519" key`},
		{[]HostKeyPair{{Type: "ed25519", Private: hk[0].Private, Public: other[0].Public}}, "host_keys[0]: public: not the private key's public half"},
		{[]HostKeyPair{{Type: "ed25519", Private: hk[1].Private, Public: hk[1].Public}}, "host_keys[0]: public: not an ed25519 public key line"},
		{[]HostKeyPair{{Type: "ecdsa", Private: hk[1].Private, Public: "garbage"}}, "host_keys[0]: public: not an ecdsa public key line"},
		{[]HostKeyPair{{Type: "ed25519", Private: "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n", Public: hk[0].Public}}, "host_keys[0]: private: not one OPENSSH PRIVATE KEY PEM block"},
		{[]HostKeyPair{{Type: "ed25519", Private: hk[0].Private + hk[0].Private, Public: hk[0].Public}}, "host_keys[0]: private: not one OPENSSH PRIVATE KEY PEM block"},
		{[]HostKeyPair{{Type: "ed25519", Private: strings.Repeat("x", 5000), Public: hk[0].Public}}, "host_keys[0]: private: 5000 bytes, more than 4096"},
		{[]HostKeyPair{{Type: "ed25519", Private: string(pem.EncodeToMemory(&pem.Block{Type: "OPENSSH PRIVATE KEY", Bytes: []byte("openssh-key-v1\x00\x00\x00")})), Public: hk[0].Public}}, "host_keys[0]: private: truncated openssh-key-v1 key"},
		{[]HostKeyPair{encrypted}, "host_keys[0]: private: an encrypted key"},
	} {
		g := newFakeGuest(t)
		g.debian12()
		a := validIdentityArgs()
		a.HostKeys = tc.keys
		_, err := identity(a)
		if err == nil || err.Error() != "identity: "+tc.want {
			t.Errorf("err = %v, want %s", err, "identity: "+tc.want)
		}
		if len(g.calls) > 0 {
			t.Errorf("%s: calls %q", tc.want, g.calls)
		}
	}
}
