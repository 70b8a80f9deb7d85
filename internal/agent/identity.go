package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
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

// checkIdentityArgs refuses any field out of shape, naming it (by its JSON
// name). The host is trusted; being strict costs nothing.
func checkIdentityArgs(a IdentityArgs) (identityPlan, error) {
	var p identityPlan
	q := func(s string) string { return strconv.Quote(cleanText(s, 64)) }

	p.time = time.Unix(0, a.TimeUnixNano)
	if p.time.Before(earliestTime) {
		return p, fmt.Errorf("time_unix_nano: %s is before %s", p.time.UTC().Format(time.RFC3339), earliestTime.Format("2006-01-02"))
	}
	if n := len(a.Entropy); n < minRefreshEntropy || n > maxRefreshEntropy {
		return p, fmt.Errorf("entropy: must be %d-%d bytes, got %d", minRefreshEntropy, maxRefreshEntropy, n)
	}
	p.entropy = a.Entropy

	if len(a.MachineID) != 32 || strings.Trim(a.MachineID, "0123456789abcdef") != "" {
		return p, fmt.Errorf("machine_id: %s is not 32 lowercase hex characters", q(a.MachineID))
	}
	if strings.Trim(a.MachineID, "0") == "" {
		return p, errors.New("machine_id: all zeros is not a machine ID")
	}
	p.machine = a.MachineID

	if err := checkHostname(a.Hostname); err != nil {
		return p, fmt.Errorf("hostname: %s %w", q(a.Hostname), err)
	}
	p.hostname = a.Hostname

	mac, err := net.ParseMAC(a.MAC)
	switch {
	case err != nil:
		return p, fmt.Errorf("mac: %s is not a MAC address", q(a.MAC))
	case len(mac) != 6:
		return p, fmt.Errorf("mac: %s is not a 6-byte Ethernet address", q(a.MAC))
	case mac[0]&1 != 0:
		return p, fmt.Errorf("mac: %s is a multicast address", mac)
	case bytes.Equal(mac, make([]byte, 6)):
		return p, fmt.Errorf("mac: %s is not a usable address", mac)
	}
	p.mac = mac

	addr, err := netip.ParsePrefix(a.Address)
	if err != nil || !addr.Addr().Is4() {
		return p, fmt.Errorf("address: %s is not an IPv4 CIDR (like 172.16.0.5/24)", q(a.Address))
	}
	if addr.Bits() < 1 || addr.Bits() > 30 {
		return p, fmt.Errorf("address: %s: the prefix length must be 1-30", addr)
	}
	if !addr.Addr().IsGlobalUnicast() {
		return p, fmt.Errorf("address: %s is not a unicast address", addr)
	}
	if netOrBroadcast(addr.Addr(), addr) {
		return p, fmt.Errorf("address: %s is the network or broadcast address of its subnet", addr)
	}
	p.addr = addr

	gw, err := netip.ParseAddr(a.Gateway)
	if err != nil || !gw.Is4() {
		return p, fmt.Errorf("gateway: %s is not an IPv4 address", q(a.Gateway))
	}
	switch {
	case !addr.Contains(gw):
		return p, fmt.Errorf("gateway: %s is outside the address's subnet %s", gw, addr.Masked())
	case gw == addr.Addr():
		return p, fmt.Errorf("gateway: %s is the address itself", gw)
	case netOrBroadcast(gw, addr):
		return p, fmt.Errorf("gateway: %s is the network or broadcast address of %s", gw, addr.Masked())
	}
	p.gw = gw

	p.iface = a.Interface
	if p.iface == "" {
		p.iface = defaultIdentityIface
	}
	if len(p.iface) > 15 || p.iface == "." || p.iface == ".." || strings.Trim(p.iface, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") != "" {
		return p, fmt.Errorf("interface: %s is not a network interface name", q(a.Interface))
	}

	if len(a.HostKeys) > MaxHostKeys {
		return p, fmt.Errorf("host_keys: %d keys, more than %d", len(a.HostKeys), MaxHostKeys)
	}
	for i, k := range a.HostKeys {
		if p.keys == nil {
			p.keys = map[string]HostKeyPair{}
		}
		if _, dup := p.keys[k.Type]; dup {
			return p, fmt.Errorf("host_keys[%d]: a second %s key", i, q(k.Type))
		}
		pub, err := checkHostKeyPair(k)
		if err != nil {
			return p, fmt.Errorf("host_keys[%d]: %w", i, err)
		}
		p.keys[k.Type] = HostKeyPair{Type: k.Type, Private: k.Private, Public: pub}
	}
	return p, nil
}

// maxHostKeyPrivate caps a host-made private key (an ed25519 key's PEM is
// about 400 bytes, a P-521 one's about 800).
const maxHostKeyPrivate = 4 << 10

// hostKeyAlgorithms is the public key algorithm of each type the host makes.
var hostKeyAlgorithms = map[string][]string{
	"ed25519": {"ssh-ed25519"},
	"ecdsa":   {"ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"},
}

// checkHostKeyPair checks a host-made key: a known type, an unencrypted
// OpenSSH private key of one key whose public half is Public, of that type.
// It returns Public as "<algorithm> <base64>".
func checkHostKeyPair(k HostKeyPair) (string, error) {
	algs, ok := hostKeyAlgorithms[k.Type]
	if !ok {
		return "", fmt.Errorf("type %s is not ed25519 or ecdsa", strconv.Quote(cleanText(k.Type, 32)))
	}
	if len(k.Private) > maxHostKeyPrivate {
		return "", fmt.Errorf("private: %d bytes, more than %d", len(k.Private), maxHostKeyPrivate)
	}
	blk, rest := pem.Decode([]byte(k.Private))
	if blk == nil || blk.Type != "OPENSSH PRIVATE KEY" || strings.TrimSpace(string(rest)) != "" {
		return "", errors.New("private: not one OPENSSH PRIVATE KEY PEM block")
	}
	blob, err := openSSHPublicBlob(blk.Bytes)
	if err != nil {
		return "", fmt.Errorf("private: %w", err)
	}
	pub := pubKeyLine(k.Public)
	f := strings.Fields(pub)
	if len(f) != 2 || !slices.Contains(algs, f[0]) {
		return "", fmt.Errorf("public: not an %s public key line", k.Type)
	}
	if b, _ := base64.StdEncoding.DecodeString(f[1]); !bytes.Equal(b, blob) {
		return "", errors.New("public: not the private key's public half")
	}
	return pub, nil
}

// openSSHPublicBlob reads the public key blob of an unencrypted one-key
// openssh-key-v1 private key (PROTOCOL.key in OpenSSH's sources).
func openSSHPublicBlob(b []byte) ([]byte, error) {
	const magic = "openssh-key-v1\x00"
	if !bytes.HasPrefix(b, []byte(magic)) {
		return nil, errors.New("not an openssh-key-v1 key")
	}
	b = b[len(magic):]
	str := func() ([]byte, bool) {
		if len(b) < 4 {
			return nil, false
		}
		n := binary.BigEndian.Uint32(b)
		if uint64(n) > uint64(len(b)-4) {
			return nil, false
		}
		v := b[4 : 4+n]
		b = b[4+n:]
		return v, true
	}
	cipher, ok1 := str()
	kdf, ok2 := str()
	_, ok3 := str() // kdf options
	if !ok1 || !ok2 || !ok3 || len(b) < 4 {
		return nil, errors.New("truncated openssh-key-v1 key")
	}
	if string(cipher) != "none" || string(kdf) != "none" {
		return nil, errors.New("an encrypted key")
	}
	if n := binary.BigEndian.Uint32(b); n != 1 {
		return nil, fmt.Errorf("%d keys, want 1", n)
	}
	b = b[4:]
	pub, ok := str()
	if !ok || len(pub) == 0 {
		return nil, errors.New("truncated openssh-key-v1 key")
	}
	return pub, nil
}

// checkHostname: RFC 1123 labels (letters, digits, '-' inside), joined by
// dots, at most 63 characters in all (what every resolver and sethostname
// takes).
func checkHostname(h string) error {
	if h == "" {
		return errors.New("is empty")
	}
	if len(h) > 63 {
		return fmt.Errorf("is %d characters long, more than 63", len(h))
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" {
			return errors.New("has an empty label")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("has a label starting or ending with '-'")
		}
		if strings.Trim(label, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != "" {
			return errors.New("may hold only letters, digits, '-' and dots")
		}
	}
	return nil
}

// netOrBroadcast reports whether a is the network or broadcast address of p.
func netOrBroadcast(a netip.Addr, p netip.Prefix) bool {
	n := p.Masked().Addr().As4()
	b := n
	for i, host := 0, 32-p.Bits(); i < 4; i++ {
		bits := min(max(host-8*(3-i), 0), 8)
		b[i] |= byte(1<<bits - 1)
	}
	return a == netip.AddrFrom4(n) || a == netip.AddrFrom4(b)
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

// The SSH servers identity knows.
const (
	openSSH  = "openssh"
	dropbear = "dropbear"
)

// sshServer is the guest's SSH server as identity finds it.
type sshServer struct {
	kind string
	pid  int // the listener; 0 when none runs
	// listening are the listener's TCP listening sockets (inode: port).
	listening map[uint64]int
	keys      []hostKeyFile
	// dropbear: wrapper is the pid of banger's /etc/banger/sshd when that
	// runs it (busybox init respawns the wrapper); otherwise identity starts
	// dropbear again itself, with exe, argv and the log its stderr went to.
	wrapper int
	exe     string
	argv    []string
	logPath string
}

// hostKeyFile is one host key: its type (ssh-keygen's and dropbearkey's -t)
// and its guest path.
type hostKeyFile struct{ typ, path string }

// renewHostKeys makes new host keys for the guest's SSH server, replaces
// the old ones with them, has the server serve them, and returns their
// public halves.
func (s *identitySystem) renewHostKeys(hostname string, given map[string]HostKeyPair) ([]string, error) {
	srv, err := s.findSSHServer()
	if err != nil {
		return nil, err
	}
	if len(srv.keys) > MaxHostKeys {
		return nil, fmt.Errorf("%s serves %d host keys, more than the %d banger takes", srv.kind, len(srv.keys), MaxHostKeys)
	}
	pubs, err := s.makeKeys(srv, hostname, given)
	if err != nil {
		return nil, err
	}
	if err := s.reloadSSH(srv); err != nil {
		return nil, err
	}
	return pubs, nil
}

// findSSHServer finds the running SSH server: sshd named by its pidfile,
// else whatever listens on port 22 (sshd or dropbear); with none running,
// the one installed.
func (s *identitySystem) findSSHServer() (*sshServer, error) {
	listen, err := tcpListening(s.proc)
	if err != nil {
		return nil, err
	}
	srv := &sshServer{}
	for _, pf := range []string{"/run/sshd.pid", "/var/run/sshd.pid"} {
		b, err := os.ReadFile(s.path(pf))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || s.comm(pid) != "sshd" {
			continue
		}
		if held := s.heldListening(pid, listen); len(held) > 0 {
			srv.kind, srv.pid, srv.listening = openSSH, pid, held
			break
		}
	}
	if srv.pid == 0 {
		on22 := map[uint64]bool{}
		for inode, port := range listen {
			if port == sshPort {
				on22[inode] = true
			}
		}
		if len(on22) > 0 {
			pid := 0
			for _, o := range socketOwners(s.proc, on22) {
				if pid == 0 || o.pid < pid {
					pid = o.pid
				}
			}
			if pid == 0 {
				return nil, fmt.Errorf("no process found holding the socket listening on port %d", sshPort)
			}
			switch comm := s.comm(pid); comm {
			case "sshd":
				srv.kind = openSSH
			case "dropbear":
				srv.kind = dropbear
			default:
				return nil, fmt.Errorf("port %d is held by %q (pid %d), neither sshd nor dropbear", sshPort, cleanText(comm, 64), pid)
			}
			srv.pid, srv.listening = pid, s.heldListening(pid, listen)
		}
	}
	if srv.pid == 0 {
		switch {
		case s.exists("/usr/sbin/sshd"):
			srv.kind = openSSH
		case s.exists("/usr/sbin/dropbear"), s.exists("/usr/bin/dropbear"):
			srv.kind = dropbear
		default:
			return nil, fmt.Errorf("no SSH server: nothing listens on port %d and neither sshd nor dropbear is installed", sshPort)
		}
	}
	if srv.kind == openSSH {
		srv.keys = s.openSSHKeys()
		return srv, nil
	}
	return srv, s.dropbearSetup(srv)
}

// openSSHKeys: /etc/ssh/ssh_host_<type>_key for ed25519 and ecdsa (what
// banger's images serve), and rsa when the guest has an RSA key.
func (s *identitySystem) openSSHKeys() []hostKeyFile {
	types := []string{"ed25519", "ecdsa"}
	if s.exists("/etc/ssh/ssh_host_rsa_key") {
		types = append(types, "rsa")
	}
	var keys []hostKeyFile
	for _, t := range types {
		keys = append(keys, hostKeyFile{t, "/etc/ssh/ssh_host_" + t + "_key"})
	}
	return keys
}

var dropbearKeyName = regexp.MustCompile(`^dropbear_(ed25519|ecdsa|rsa)_host_key$`)

// dropbearSetup finds the keys dropbear serves (its -r arguments, else the
// list banger's rc.boot wrote, else the ed25519 and ecdsa keys in
// /etc/dropbear) and how it is restarted.
func (s *identitySystem) dropbearSetup(srv *sshServer) error {
	var paths []string
	if srv.pid != 0 {
		pid := strconv.Itoa(srv.pid)
		srv.argv = splitCmdline(s.readProc(pid, "cmdline"))
		if len(srv.argv) == 0 {
			return fmt.Errorf("dropbear (pid %d): cannot read its command line", srv.pid)
		}
		for i := 1; i < len(srv.argv); i++ {
			a := srv.argv[i]
			switch {
			case a == "-r" && i+1 < len(srv.argv):
				i++
				paths = append(paths, srv.argv[i])
			case strings.HasPrefix(a, "-r") && len(a) > 2:
				paths = append(paths, a[2:])
			}
		}
		if ppid := procPPid(s.readProc(pid, "stat")); ppid > 0 && s.isSSHWrapper(ppid) {
			srv.wrapper = ppid
		}
		if srv.wrapper == 0 {
			exe, err := os.Readlink(filepath.Join(s.proc, pid, "exe"))
			if err != nil {
				return fmt.Errorf("dropbear (pid %d): %w", srv.pid, err)
			}
			srv.exe = exe
			if l, err := os.Readlink(filepath.Join(s.proc, pid, "fd", "2")); err == nil && filepath.IsAbs(l) && !strings.HasPrefix(l, "/dev/") {
				if fi, err := os.Stat(s.path(l)); err == nil && fi.Mode().IsRegular() {
					srv.logPath = l
				}
			}
		}
	}
	if len(paths) == 0 {
		if b, err := os.ReadFile(s.path("/run/banger/hostkeys")); err == nil {
			paths = strings.Fields(string(b))
		}
	}
	if len(paths) == 0 {
		paths = []string{"/etc/dropbear/dropbear_ed25519_host_key", "/etc/dropbear/dropbear_ecdsa_host_key"}
	}
	for _, p := range paths {
		m := dropbearKeyName.FindStringSubmatch(filepath.Base(p))
		if m == nil || !filepath.IsAbs(p) {
			return fmt.Errorf("dropbear host key %s: cannot tell its type from its name (want /…/dropbear_<ed25519|ecdsa|rsa>_host_key)", strconv.Quote(cleanText(p, 128)))
		}
		srv.keys = append(srv.keys, hostKeyFile{m[1], p})
	}
	return nil
}

// makeKeys makes every new key beside the old one (<key>.banger-new), or
// writes the host's key of its type there (OpenSSH only), then moves them
// over the old keys, and removes the stale OpenSSH host keys the server no
// longer serves (a DSA key, say). It returns the public keys.
func (s *identitySystem) makeKeys(srv *sshServer, hostname string, given map[string]HostKeyPair) ([]string, error) {
	type made struct{ tmp, dst string }
	var moves []made
	cleanup := func() {
		for _, m := range moves {
			os.Remove(m.tmp)
			os.Remove(m.tmp + ".pub")
		}
	}
	var pubs []string
	for _, k := range srv.keys {
		dst := s.path(k.path)
		tmp := dst + ".banger-new"
		os.Remove(tmp)
		os.Remove(tmp + ".pub")
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			cleanup()
			return nil, err
		}
		moves = append(moves, made{tmp, dst})
		var pub string
		if g, ok := given[k.typ]; ok && srv.kind == openSSH {
			if err := os.WriteFile(tmp, []byte(g.Private), 0o600); err != nil {
				cleanup()
				return nil, err
			}
			if err := os.WriteFile(tmp+".pub", []byte(g.Public+" root@"+hostname+"\n"), 0o644); err != nil {
				cleanup()
				return nil, err
			}
			pub = g.Public
		} else if srv.kind == openSSH {
			if _, err := s.run("ssh-keygen", "-q", "-t", k.typ, "-N", "", "-C", "root@"+hostname, "-f", tmp); err != nil {
				cleanup()
				return nil, err
			}
			b, err := os.ReadFile(tmp + ".pub")
			if err != nil {
				cleanup()
				return nil, fmt.Errorf("ssh-keygen made no public key: %w", err)
			}
			pub = pubKeyLine(string(b))
		} else {
			out, err := s.run("dropbearkey", "-t", k.typ, "-f", tmp)
			if err != nil {
				cleanup()
				return nil, err
			}
			pub = pubKeyLine(string(out))
		}
		if pub == "" {
			cleanup()
			return nil, fmt.Errorf("%s: no public key in the output of the key tool", k.path)
		}
		pubs = append(pubs, pub)
	}
	for _, m := range moves {
		if srv.kind == openSSH {
			if err := os.Rename(m.tmp+".pub", m.dst+".pub"); err != nil {
				cleanup()
				return nil, err
			}
		}
		if err := os.Rename(m.tmp, m.dst); err != nil {
			cleanup()
			return nil, err
		}
	}
	if srv.kind == openSSH {
		keep := map[string]bool{}
		for _, m := range moves {
			keep[m.dst], keep[m.dst+".pub"] = true, true
		}
		old, _ := filepath.Glob(s.path("/etc/ssh/ssh_host_*_key*"))
		for _, f := range old {
			if !keep[f] && (strings.HasSuffix(f, "_key") || strings.HasSuffix(f, "_key.pub")) {
				if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return nil, err
				}
			}
		}
	}
	return pubs, nil
}

// pubKeyLine finds the first "<type> <base64>" public key line in a key
// tool's output (dropbearkey prints it among other lines; a .pub file is
// one such line with a comment) and returns it without the comment.
func pubKeyLine(out string) string {
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) < 2 || !(strings.HasPrefix(f[0], "ssh-") || strings.HasPrefix(f[0], "ecdsa-")) {
			continue
		}
		if _, err := base64.StdEncoding.DecodeString(f[1]); err != nil {
			continue
		}
		return f[0] + " " + f[1]
	}
	return ""
}

// sshReloadMarker asks banger's dropbear wrapper to start dropbear again at
// once when it exits.
const sshReloadMarker = "/run/banger/sshd-reload"

// wrapperReloads reports whether /etc/banger/sshd honours sshReloadMarker.
func (s *identitySystem) wrapperReloads() bool {
	b, err := os.ReadFile(s.path("/etc/banger/sshd"))
	return err == nil && strings.Contains(string(b), sshReloadMarker)
}

// isSSHWrapper reports whether pid runs banger's /etc/banger/sshd (the tiny
// image's dropbear wrapper, which busybox init respawns).
func (s *identitySystem) isSSHWrapper(pid int) bool {
	return slices.Contains(splitCmdline(s.readProc(strconv.Itoa(pid), "cmdline")), "/etc/banger/sshd")
}

// reloadSSH makes the running server serve the new keys and waits until it
// listens again: OpenSSH re-executes itself on SIGHUP (closing its listening
// sockets, loading its keys, then listening anew); dropbear cannot reload, so
// its listener is ended (existing sessions live on in their own processes)
// and started again.
//
// In the tiny image busybox init starts it again: once dropbear's sockets
// are closed, its wrapper /etc/banger/sshd (which would sleep 1 s after
// dropbear exits, against a tight respawn loop) is ended too, and init
// respawns it at once. A dropbear nothing respawns (an OCI image's) is
// started again here with its own command line.
func (s *identitySystem) reloadSSH(srv *sshServer) error {
	if srv.pid == 0 {
		return nil // nothing runs: the server reads the new keys when it starts
	}
	closed := func(cur map[uint64]int) bool {
		for inode := range srv.listening {
			if _, ok := cur[inode]; ok {
				return false
			}
		}
		return true
	}
	if srv.kind == openSSH {
		if s.sshdRereadsKeys(srv.pid) {
			return nil
		}
		if err := s.signal(srv.pid, syscall.SIGHUP); err != nil {
			return fmt.Errorf("SIGHUP sshd (pid %d): %w", srv.pid, err)
		}
	} else {
		// A wrapper that starts dropbear again itself when it finds the
		// marker (the tiny image's, since banger-agent protocol 3): no wait
		// for busybox init, whose respawn loop sleeps a second.
		loops := srv.wrapper != 0 && s.wrapperReloads()
		if loops {
			if err := os.WriteFile(s.path(sshReloadMarker), nil, 0o600); err != nil {
				loops = false
			}
		}
		if err := s.signal(srv.pid, syscall.SIGTERM); err != nil {
			return fmt.Errorf("stop dropbear (pid %d): %w", srv.pid, err)
		}
		if err := s.waitListening("dropbear to close its listening sockets", closed); err != nil {
			return err
		}
		if srv.wrapper != 0 && !loops {
			// Gone already (or no longer the wrapper): init respawns it anyway.
			if s.isSSHWrapper(srv.wrapper) {
				s.signal(srv.wrapper, syscall.SIGTERM)
			}
		} else if srv.wrapper == 0 {
			if err := s.start(srv.exe, srv.argv, srv.logPath); err != nil {
				return fmt.Errorf("start dropbear again: %w", err)
			}
		}
	}
	ports := map[int]bool{}
	for _, port := range srv.listening {
		ports[port] = true
	}
	return s.waitListening(fmt.Sprintf("%s to listen again", srv.kind), func(cur map[uint64]int) bool {
		for port := range ports {
			fresh := false
			for inode, p := range cur {
				if _, old := srv.listening[inode]; p == port && !old {
					fresh = true
					break
				}
			}
			if !fresh {
				return false
			}
		}
		return true
	})
}

// sshdSessionPaths are where OpenSSH 9.8 and later install sshd-session
// (Debian, Fedora, upstream's default, Arch).
var sshdSessionPaths = []string{"/usr/lib/openssh/sshd-session", "/usr/libexec/openssh/sshd-session", "/usr/libexec/sshd-session", "/usr/lib/ssh/sshd-session"}

// sshdRereadsKeys reports whether the OpenSSH listener pid re-executes sshd
// for each connection, the new process loading the host keys from disk
// (OpenSSH before 9.8, without -r): then new key files are served without a
// reload. From 9.8 the listener loads the keys and hands them to
// sshd-session, so a reload is needed; so it is when in doubt.
func (s *identitySystem) sshdRereadsKeys(pid int) bool {
	for _, p := range sshdSessionPaths {
		if s.exists(p) {
			return false
		}
	}
	exe, err := os.Readlink(filepath.Join(s.proc, strconv.Itoa(pid), "exe"))
	if err != nil || !filepath.IsAbs(exe) || s.exists(filepath.Join(filepath.Dir(exe), "sshd-session")) {
		return false
	}
	// The listener's title keeps its command line ("sshd: /usr/sbin/sshd -D
	// [listener] …"); a flag group with r (-r, -Dr) means no re-exec.
	for _, f := range strings.Fields(strings.ReplaceAll(s.readProc(strconv.Itoa(pid), "cmdline"), "\x00", " ")) {
		if len(f) > 1 && f[0] == '-' && f[1] != '-' && strings.ContainsRune(f[1:], 'r') {
			return false
		}
	}
	return true
}

// waitListening polls the guest's TCP listening sockets until done says
// yes, for at most listenWait.
func (s *identitySystem) waitListening(what string, done func(map[uint64]int) bool) error {
	deadline := time.Now().Add(s.listenWait)
	for {
		cur, err := tcpListening(s.proc)
		if err != nil {
			return err
		}
		if done(cur) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waited %v for %s", s.listenWait, what)
		}
		time.Sleep(s.poll)
	}
}

// tcpListening maps the inode of every TCP socket in LISTEN state to its
// port.
func tcpListening(proc string) (map[uint64]int, error) {
	out := map[uint64]int{}
	for _, proto := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(filepath.Join(proc, "net", proto))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		es, err := parseProcNet(proto, b)
		if err != nil {
			return nil, fmt.Errorf("%s/net/%s: %w", proc, proto, err)
		}
		for _, e := range es {
			if e.inode != 0 {
				out[e.inode] = e.port
			}
		}
	}
	return out, nil
}

// heldListening is the part of listen that pid holds.
func (s *identitySystem) heldListening(pid int, listen map[uint64]int) map[uint64]int {
	out := map[uint64]int{}
	inodes, _ := fdSockets(s.proc, pid)
	for _, inode := range inodes {
		if port, ok := listen[inode]; ok {
			out[inode] = port
		}
	}
	return out
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
