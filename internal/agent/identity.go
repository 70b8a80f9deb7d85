package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/sysexec"
)

// The identity op (protocol 3): a guest forked from another guest's snapshot
// wakes up as its parent. identity gives it its own identity, in this order:
//
//  1. entropy, mixed into the kernel's RNG and the CRNG reseeded (refresh's
//     addEntropy), before anything reads it;
//  2. the host's clock (refresh's setClock);
//  3. /etc/machine-id (and /var/lib/dbus/machine-id when it is its own file);
//  4. the hostname: sethostname, /etc/hostname, the "127.0.1.1 <old>" line of
//     /etc/hosts;
//  5. the network interface (eth0), through netlink: MAC (link down, set,
//     up), its IPv4 addresses replaced, the default route through the
//     gateway restored, the new pair announced with a gratuitous ARP;
//  6. new SSH host keys: for OpenSSH those the host made (host_keys,
//     protocol 4), else made with the image's own tool (ssh-keygen or
//     dropbearkey) once the RNG is fresh; and the SSH server made to serve
//     them. OpenSSH before 9.8 re-executes itself for every connection and
//     that process reads the keys from disk, so the new files are served at
//     once and nothing is signalled; a newer one (whose sshd-session takes
//     its keys from the listener), or one run with -r, gets SIGHUP and
//     re-executes; dropbear cannot reload, so its listener is ended and
//     started again (by busybox init in the tiny image). After a restart,
//     identity returns once the server listens on new sockets.
//
// Every effect goes through identityHooks, which the package's tests
// replace.

// sshPort is where banger's guests run their SSH server.
const sshPort = 22

// defaultIdentityIface is the interface identity configures when the host
// names none.
const defaultIdentityIface = "eth0"

// identitySystem is everything identity does to the guest. Paths are
// guest paths under root ("/" in the guest); procfs is read at proc.
type identitySystem struct {
	root string
	proc string

	sethostname func(name string) error

	// The network interface, through netlink.
	linkDown     func(iface string) error
	setMAC       func(iface string, mac net.HardwareAddr) error
	linkUp       func(iface string) error
	addrs        func(iface string) ([]netip.Prefix, error) // its IPv4 addresses
	addrDel      func(iface string, p netip.Prefix) error
	addrAdd      func(iface string, p netip.Prefix) error
	defaultRoute func(iface string, gw netip.Addr) error // replace 0.0.0.0/0 via gw
	// announce broadcasts a gratuitous ARP for ip at mac.
	announce func(iface string, mac net.HardwareAddr, ip netip.Addr) error

	// run runs a key tool of the image (ssh-keygen, dropbearkey) and
	// returns its standard output.
	run func(name string, args ...string) ([]byte, error)
	// signal sends sig to pid.
	signal func(pid int, sig syscall.Signal) error
	// start starts a daemon (a dropbear that nothing respawns) in its own
	// session, its stderr appended to logPath ("" for none).
	start func(exe string, argv []string, logPath string) error
	// listenWait bounds the wait for the SSH server to listen again; poll is
	// how often it looks.
	listenWait time.Duration
	poll       time.Duration
}

// identityHooks is what the guest uses; see identity_linux.go.
var identityHooks = identitySystem{
	root:         "/",
	proc:         "/proc",
	sethostname:  sethostname,
	linkDown:     linkDown,
	setMAC:       setMAC,
	linkUp:       linkUp,
	addrs:        addrsV4,
	addrDel:      addrDel,
	addrAdd:      addrAdd,
	defaultRoute: defaultRoute,
	announce:     announce,
	run:          runTool,
	signal:       signalPID,
	start:        startDaemon,
	listenWait:   30 * time.Second,
	poll:         20 * time.Millisecond,
}

// identityMu runs one identity at a time: two would race on the files and
// the SSH server.
var identityMu sync.Mutex

// identityPlan is IdentityArgs, checked and parsed.
type identityPlan struct {
	time     time.Time
	entropy  []byte
	machine  string
	hostname string
	mac      net.HardwareAddr
	addr     netip.Prefix
	gw       netip.Addr
	iface    string
	keys     map[string]HostKeyPair // by type, public "<algorithm> <base64>"
}

func identity(a IdentityArgs) (IdentityResult, error) {
	p, err := checkIdentityArgs(a)
	if err != nil {
		return IdentityResult{}, fmt.Errorf("identity: %w", err)
	}
	identityMu.Lock()
	defer identityMu.Unlock()
	s := identityHooks
	if err := refreshHooks.addEntropy(p.entropy); err != nil {
		return IdentityResult{}, fmt.Errorf("identity: entropy: %w", err)
	}
	step, err := refreshHooks.setClock(p.time)
	if err != nil {
		return IdentityResult{}, fmt.Errorf("identity: clock: %w", err)
	}
	if err := s.writeMachineID(p.machine); err != nil {
		return IdentityResult{}, fmt.Errorf("identity: machine-id: %w", err)
	}
	if err := s.setHostname(p.hostname); err != nil {
		return IdentityResult{}, fmt.Errorf("identity: hostname: %w", err)
	}
	if err := s.setNetwork(p.iface, p.mac, p.addr, p.gw); err != nil {
		return IdentityResult{}, fmt.Errorf("identity: network: %w", err)
	}
	keys, err := s.renewHostKeys(p.hostname, p.keys)
	if err != nil {
		return IdentityResult{}, fmt.Errorf("identity: ssh host keys: %w", err)
	}
	return IdentityResult{ClockStepNanos: step, HostKeys: keys}, nil
}

// path is guest path p under the root.
func (s *identitySystem) path(p string) string { return filepath.Join(s.root, p) }

// resolve follows p's last component while it is a symbolic link, keeping
// absolute targets under the root (/etc/hosts is a link to /run/hosts in
// banger's images), so that writing through it stays in the guest's tree.
func (s *identitySystem) resolve(p string) (string, error) {
	for range 8 {
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			return p, nil // a missing file is made where it is named
		}
		t, err := os.Readlink(p)
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(t) {
			p = s.path(t)
		} else {
			p = filepath.Join(filepath.Dir(p), t)
		}
	}
	return "", fmt.Errorf("%s: too many levels of symbolic links", p)
}

// rewrite replaces the content of the file at guest path p in place (through
// symbolic links, and keeping a bind mount over it), making it with perm
// when it is missing, and syncs it.
func (s *identitySystem) rewrite(p string, data []byte, perm fs.FileMode) error {
	real, err := s.resolve(s.path(p))
	if err != nil {
		return err
	}
	f, err := os.OpenFile(real, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeMachineID writes /etc/machine-id, and /var/lib/dbus/machine-id when
// that file exists and is not a link to /etc/machine-id.
func (s *identitySystem) writeMachineID(id string) error {
	data := []byte(id + "\n")
	if err := s.rewrite("/etc/machine-id", data, 0o444); err != nil {
		return err
	}
	const dbus = "/var/lib/dbus/machine-id"
	if _, err := os.Lstat(s.path(dbus)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	etc, err := s.resolve(s.path("/etc/machine-id"))
	if err != nil {
		return err
	}
	d, err := s.resolve(s.path(dbus))
	if err != nil {
		return err
	}
	if filepath.Clean(d) == filepath.Clean(etc) {
		return nil
	}
	if a, err := os.Stat(d); err == nil {
		if b, err := os.Stat(etc); err == nil && os.SameFile(a, b) {
			return nil
		}
	}
	if err := s.rewrite(dbus, data, 0o444); err != nil {
		return fmt.Errorf("%s: %w", dbus, err)
	}
	return nil
}

// setHostname sets the kernel's hostname and /etc/hostname, and renames the
// old name on /etc/hosts's 127.0.1.1 line.
func (s *identitySystem) setHostname(name string) error {
	b, _ := os.ReadFile(filepath.Join(s.proc, "sys/kernel/hostname"))
	old := strings.TrimSpace(string(b))
	if err := s.sethostname(name); err != nil {
		return fmt.Errorf("sethostname: %w", err)
	}
	if err := s.rewrite("/etc/hostname", []byte(name+"\n"), 0o644); err != nil {
		return err
	}
	hostsPath, err := s.resolve(s.path("/etc/hosts"))
	if err != nil {
		return err
	}
	hosts, err := os.ReadFile(hostsPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if out, changed := renameInHosts(hosts, old, name); changed {
		return s.rewrite("/etc/hosts", out, 0o644)
	}
	return nil
}

// renameInHosts replaces old (and old.<domain>) by name on the lines for
// 127.0.1.1 (Debian's line for the machine's own name).
func renameInHosts(hosts []byte, old, name string) ([]byte, bool) {
	if old == "" || old == name {
		return hosts, false
	}
	lines := strings.SplitAfter(string(hosts), "\n")
	changed := false
	for i, line := range lines {
		body, nl := strings.CutSuffix(line, "\n")
		body, comment, hasComment := strings.Cut(body, "#")
		f := strings.Fields(body)
		if len(f) < 2 || f[0] != "127.0.1.1" {
			continue
		}
		hit := false
		for j := 1; j < len(f); j++ {
			if f[j] == old {
				f[j], hit = name, true
			} else if rest, ok := strings.CutPrefix(f[j], old+"."); ok {
				f[j], hit = name+"."+rest, true
			}
		}
		if !hit {
			continue
		}
		out := f[0] + "\t" + strings.Join(f[1:], " ")
		if hasComment {
			out += " #" + comment
		}
		if nl {
			out += "\n"
		}
		lines[i], changed = out, true
	}
	return []byte(strings.Join(lines, "")), changed
}

// setNetwork gives iface the MAC (down, set, up: the kernel drops the
// interface's routes when it goes down), replaces its IPv4 addresses with
// addr (all removed first: removing a primary address also removes its
// secondaries), restores the default route through gw, and announces the
// new address and MAC with a gratuitous ARP, so that a neighbour (the host)
// that knew the address at another MAC does not wait for its entry to go
// stale. The announcement is best effort: a neighbour also learns the pair
// from the guest's first ARP request.
func (s *identitySystem) setNetwork(iface string, mac net.HardwareAddr, addr netip.Prefix, gw netip.Addr) error {
	if err := s.linkDown(iface); err != nil {
		return fmt.Errorf("%s down: %w", iface, err)
	}
	if err := s.setMAC(iface, mac); err != nil {
		s.linkUp(iface) // back up with the old MAC rather than down
		return fmt.Errorf("%s MAC %s: %w", iface, mac, err)
	}
	if err := s.linkUp(iface); err != nil {
		return fmt.Errorf("%s up: %w", iface, err)
	}
	old, err := s.addrs(iface)
	if err != nil {
		return fmt.Errorf("%s addresses: %w", iface, err)
	}
	for _, p := range old {
		if err := s.addrDel(iface, p); err != nil {
			return fmt.Errorf("%s: remove %s: %w", iface, p, err)
		}
	}
	if err := s.addrAdd(iface, addr); err != nil {
		return fmt.Errorf("%s: add %s: %w", iface, addr, err)
	}
	if err := s.defaultRoute(iface, gw); err != nil {
		return fmt.Errorf("%s: default route via %s: %w", iface, gw, err)
	}
	_ = s.announce(iface, mac, addr.Addr())
	return nil
}

func (s *identitySystem) readProc(pid, name string) string {
	b, _ := os.ReadFile(filepath.Join(s.proc, pid, name))
	return string(b)
}

func (s *identitySystem) comm(pid int) string {
	return strings.TrimSpace(s.readProc(strconv.Itoa(pid), "comm"))
}

func (s *identitySystem) exists(p string) bool {
	_, err := os.Stat(s.path(p))
	return err == nil
}

// splitCmdline splits /proc/PID/cmdline (NUL-terminated arguments).
func splitCmdline(s string) []string {
	s = strings.TrimSuffix(s, "\x00")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\x00")
}

// procPPid is the parent pid in /proc/PID/stat ("pid (comm) state ppid …";
// comm may hold spaces and parentheses), or 0.
func procPPid(stat string) int {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// toolPath is where runTool looks for the image's key tools.
var toolPath = []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin"}

// runTool runs one of the image's tools (ssh-keygen, dropbearkey) with no
// input and a plain PATH, bounded by a timeout (an RSA key takes seconds
// under TCG), and returns its standard output. Its error carries the tail
// of its standard error.
func runTool(name string, args ...string) ([]byte, error) {
	exe, err := sysexec.LookIn(name, toolPath)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := sysexec.Run(ctx, sysexec.Cmd{Path: exe, Args: args, Env: []string{"PATH=" + strings.Join(toolPath, ":")}})
	return res.Stdout, err
}
