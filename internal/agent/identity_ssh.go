package agent

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

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
