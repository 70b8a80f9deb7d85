// Package sdharness boots the host's real, unmodified systemd as PID 1 of a set of namespaces
// created by a test, so tests can install and drive real unit files (bangerd.service,
// bangerd-root.service, ...) without touching the host's systemd, file system or network.
//
// Start clones a process straight into a private cgroup2 subtree (clone3 CLONE_INTO_CGROUP)
// with new pid, mount, cgroup, uts, ipc and (by default) network namespaces. That process runs
// the embedded init.sh, which mounts an overlay root (host / read-only below, tmpfs above),
// /proc, read-only /sys, cgroup2, a minimal /dev (with /dev/net/tun and /dev/kvm when the host
// has them), tmpfs /run and /tmp and the test's binds, pivots into it and execs systemd with a
// minimal harness.target. Start returns once `systemctl is-system-running` says running or
// degraded (typically well under a second). Everything the test writes inside lands in the
// overlay's tmpfs or in a read-write Bind; Stop powers the instance off, SIGKILLs it if needed
// and removes the cgroup subtree and state directory, leaving nothing behind.
//
// Tests using it are skipped unless they run as root on a host with a writable cgroup2
// hierarchy and a systemd binary. See docs/testing-systemd.md.
package sdharness

import (
	"bytes"
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/sysexec"
	"golang.org/x/sys/unix"
)

//go:embed init.sh
var initScript []byte

const (
	// cgroupPrefix names every cgroup directory the harness creates under the cgroup2 root.
	cgroupPrefix = "sdharness-"
	// execCgroup is the leaf cgroup (inside the instance's subtree) that processes started
	// with Exec and Cmd are cloned into, next to systemd's init.scope and system.slice.
	execCgroup = "harness.exec"
	// bootTimeout bounds Start's wait for is-system-running.
	bootTimeout = 30 * time.Second
	// staleAge: a leftover sdharness cgroup or state dir older than this with no process in it
	// belongs to a test binary that died (SIGKILL, panic in a goroutine, ...) and is removed.
	staleAge = 2 * time.Minute
	// stopGrace bounds how long Stop waits for poweroff before SIGKILLing PID 1.
	stopGrace = 5 * time.Second
)

// insidePath is the PATH of processes started inside the instance.
const insidePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// devices are the host device nodes bound into the instance's /dev when they exist.
var devices = []string{
	"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty",
	"/dev/net/tun", "/dev/kvm",
}

// Options configure an instance.
type Options struct {
	// Name identifies the instance: cgroup directory sdharness-<Name>, state directory
	// $TMPDIR/sdharness/<Name>, hostname inside. Letters, digits, '.', '_' and '-', at most
	// 48 bytes. It must be unique among running instances on the host. Empty: derived from
	// the test name plus a random suffix.
	Name string
	// NetNS asks for a private network namespace (only lo inside). That is the default;
	// the field exists for explicitness. Set HostNet instead to share the host's network.
	NetNS bool
	// HostNet shares the host's network namespace instead of creating one. /proc/sys/net then
	// stays read-only. Must not be combined with NetNS.
	HostNet bool
	// Binds make host paths visible inside.
	Binds []Bind
	// Devices are extra host device nodes (absolute /dev/... paths) bound into /dev inside,
	// in addition to null, zero, full, random, urandom, tty, net/tun and kvm.
	Devices []string
	// Log, when set, receives the init script's output and the harness's progress lines.
	Log io.Writer
}

// Bind makes the host path Host visible at Inside. The host side is resolved (symlinks
// followed) at Start and must exist; Inside must be absolute and is created in the overlay if
// missing. A read-write bind is the one way writes inside reach the host.
type Bind struct {
	Host, Inside string
	ReadOnly     bool
}

// System is one running instance.
type System struct {
	t        testing.TB
	name     string
	pid      int    // host PID of systemd (PID 1 inside)
	cgroup   string // host path of the instance's cgroup2 subtree
	stateDir string
	nsenter  string
	log      io.Writer
	netns    bool

	// execCg is <cgroup>/harness.exec, opened for clone3 CLONE_INTO_CGROUP. Never closed
	// explicitly (a Cmd built before Stop may still start after it); the GC closes it.
	execCg *os.File

	exited   chan struct{} // closed once systemd has been reaped
	waitErr  error         // systemd's exit status, valid after exited is closed
	stopOnce sync.Once
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,48}$`)

// Start boots a new instance and registers t.Cleanup(s.Stop). It skips t unless euid is 0, a
// writable cgroup2 hierarchy exists and systemd and the tools the harness needs (bash,
// nsenter, setpriv, pivot_root, mount) are installed; any later failure is fatal.
func Start(t testing.TB, o Options) *System {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("sdharness: needs root")
	}
	cgroot, err := cgroupRoot()
	if err != nil {
		t.Skipf("sdharness: %v", err)
	}
	if err := unix.Access(cgroot, unix.W_OK); err != nil {
		t.Skipf("sdharness: cgroup2 root %s not writable: %v", cgroot, err)
	}
	systemd := ""
	for _, p := range []string{"/usr/lib/systemd/systemd", "/lib/systemd/systemd"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			systemd = p
			break
		}
	}
	if systemd == "" {
		t.Skip("sdharness: no systemd binary (/usr/lib/systemd/systemd)")
	}
	tools := map[string]string{}
	for _, tool := range []string{"bash", "nsenter", "setpriv", "pivot_root", "mount", "umount"} {
		p, err := sysexec.LookPath(tool)
		if err != nil {
			t.Skipf("sdharness: %s not found: %v", tool, err)
		}
		tools[tool] = p
	}
	if o.NetNS && o.HostNet {
		t.Fatal("sdharness: Options.NetNS and Options.HostNet are exclusive")
	}

	name := o.Name
	if name == "" {
		name = defaultName(t.Name())
	}
	if !nameRE.MatchString(name) {
		t.Fatalf("sdharness: invalid Name %q (want %s)", name, nameRE)
	}
	binds, err := resolveBinds(o.Binds)
	if err != nil {
		t.Fatalf("sdharness: %v", err)
	}
	devs := append([]string(nil), devices...)
	for _, d := range o.Devices {
		if !strings.HasPrefix(filepath.Clean(d), "/dev/") || strings.ContainsAny(d, "\t\n") {
			t.Fatalf("sdharness: invalid device %q: want an absolute /dev/... path", d)
		}
		devs = append(devs, filepath.Clean(d))
	}
	logw := o.Log
	if logw == nil {
		logw = io.Discard
	}

	stateBase := filepath.Join(os.TempDir(), "sdharness")
	removeStale(cgroot, stateBase)

	s := &System{
		t:        t,
		name:     name,
		cgroup:   filepath.Join(cgroot, cgroupPrefix+name),
		stateDir: filepath.Join(stateBase, name),
		nsenter:  tools["nsenter"],
		log:      logw,
		netns:    !o.HostNet,
		exited:   make(chan struct{}),
	}
	// The cgroup directory doubles as the lock on the name.
	if err := os.Mkdir(s.cgroup, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			t.Fatalf("sdharness: instance name %q in use (%s exists)", name, s.cgroup)
		}
		if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EROFS) {
			t.Skipf("sdharness: cannot create a cgroup under %s: %v", cgroot, err)
		}
		t.Fatalf("sdharness: %v", err)
	}
	if err := s.prepareState(binds, devs); err != nil {
		os.Remove(s.cgroup)
		os.RemoveAll(s.stateDir)
		t.Fatalf("sdharness: %v", err)
	}

	t0 := time.Now()
	if err := s.launch(tools["bash"], systemd); err != nil {
		os.Remove(s.cgroup)
		os.RemoveAll(s.stateDir)
		if errors.Is(err, syscall.ENOSYS) {
			t.Skipf("sdharness: kernel lacks clone3 (CLONE_INTO_CGROUP needs Linux >= 5.7): %v", err)
		}
		t.Fatalf("sdharness: start %s: %v", name, err)
	}
	t.Cleanup(s.Stop)
	s.logf("sdharness: %s: systemd host pid %d, cgroup %s", name, s.pid, s.cgroup)

	state, err := s.waitRunning(bootTimeout)
	if err != nil {
		t.Fatalf("sdharness: %s did not boot: %v\n%s", name, err, s.diagnostics())
	}
	s.logf("sdharness: %s: %s after %.2fs", name, state, time.Since(t0).Seconds())
	t.Logf("sdharness: %s up (%s) in %.2fs, systemd host pid %d", name, state, time.Since(t0).Seconds(), s.pid)
	if state == "degraded" {
		out, _ := s.Systemctl(context.Background(), "--failed", "--no-legend")
		t.Logf("sdharness: %s degraded; failed units:\n%s", name, out)
	}
	return s
}

func cgroupRoot() (string, error) {
	for _, p := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		var st unix.Statfs_t
		if unix.Statfs(p, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return p, nil
		}
	}
	return "", errors.New("no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
}

func defaultName(testName string) string {
	var b strings.Builder
	for _, r := range testName {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	n := b.String()
	if len(n) > 39 {
		n = n[:39]
	}
	return n + "-" + randHex(4)
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

type resolvedBind struct {
	host, inside string
	ro           bool
}

func resolveBinds(bs []Bind) ([]resolvedBind, error) {
	var out []resolvedBind
	for _, b := range bs {
		if !filepath.IsAbs(b.Inside) || filepath.Clean(b.Inside) == "/" {
			return nil, fmt.Errorf("bind %q -> %q: Inside must be an absolute path other than /", b.Host, b.Inside)
		}
		host, err := filepath.Abs(b.Host)
		if err == nil {
			host, err = filepath.EvalSymlinks(host)
		}
		if err != nil {
			return nil, fmt.Errorf("bind %q: %w", b.Host, err)
		}
		inside := filepath.Clean(b.Inside)
		if strings.ContainsAny(host+inside, "\t\n") {
			return nil, fmt.Errorf("bind %q -> %q: tabs and newlines are not supported", b.Host, b.Inside)
		}
		out = append(out, resolvedBind{host: host, inside: inside, ro: b.ReadOnly})
	}
	return out, nil
}

func (s *System) prepareState(binds []resolvedBind, devs []string) error {
	// Retried: a concurrent Stop may rmdir the (then empty) $TMPDIR/sdharness in between.
	var err error
	for i := 0; i < 10; i++ {
		if err = os.MkdirAll(filepath.Join(s.stateDir, "mnt"), 0o700); err == nil {
			break
		}
	}
	if err != nil {
		return err
	}
	var bl bytes.Buffer
	for _, b := range binds {
		mode := "rw"
		if b.ro {
			mode = "ro"
		}
		fmt.Fprintf(&bl, "%s\t%s\t%s\n", mode, b.host, b.inside)
	}
	files := map[string][]byte{
		"init.sh":     initScript,
		"binds":       bl.Bytes(),
		"devices":     []byte(strings.Join(devs, "\n") + "\n"),
		"console.log": nil,
		"init.log":    nil,
	}
	for n, data := range files {
		if err := os.WriteFile(filepath.Join(s.stateDir, n), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// launch clones the init process into the cgroup with fresh namespaces. The clone happens on
// a goroutine locked to its OS thread that lives until the process is reaped: Pdeathsig fires
// when the *thread* that forked dies, so this ties the instance's life to the test binary's.
func (s *System) launch(bash, systemd string) error {
	cgfd, err := unix.Open(s.cgroup, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(cgfd)
	logf, err := os.OpenFile(filepath.Join(s.stateDir, "init.log"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	flags := uintptr(unix.CLONE_NEWPID | unix.CLONE_NEWNS | unix.CLONE_NEWCGROUP | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC)
	netns := "0"
	if s.netns {
		flags |= unix.CLONE_NEWNET
		netns = "1"
	}
	out := io.MultiWriter(logf, s.log)
	cmd := sysexec.Cmd{
		Path: bash, Args: []string{filepath.Join(s.stateDir, "init.sh"), s.name, s.stateDir, systemd, netns, randHex(16)},
		Dir: "/", Env: []string{"PATH=" + insidePath, "LC_ALL=C"}, Stdout: out, Stderr: out,
		SysProcAttr: &syscall.SysProcAttr{
			Setsid:      true,
			Pdeathsig:   syscall.SIGKILL,
			Cloneflags:  flags,
			UseCgroupFD: true,
			CgroupFD:    cgfd,
		},
	}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer logf.Close()
		p, err := sysexec.Start(cmd)
		if err != nil {
			started <- err
			return
		}
		s.pid = p.Pid
		started <- nil
		s.waitErr = p.Wait()
		close(s.exited)
	}()
	return <-started
}

func (s *System) alive() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// waitRunning waits until PID 1 is systemd (so nsenter reaches the instance's root, not a
// half-built mount namespace that still shows the host's /run) and then until
// is-system-running reports running or degraded.
func (s *System) waitRunning(timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		if !s.alive() {
			return "", fmt.Errorf("init exited during boot: %v", s.waitErr)
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", s.pid))
		if strings.TrimSpace(string(comm)) == "systemd" {
			break
		}
		if time.Now().After(deadline) {
			return "", errors.New("timed out waiting for init to exec systemd")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := os.Mkdir(filepath.Join(s.cgroup, execCgroup), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	f, err := os.Open(filepath.Join(s.cgroup, execCgroup))
	if err != nil {
		return "", err
	}
	s.execCg = f
	last := ""
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, _, _, err := s.Exec(ctx, "systemctl", "is-system-running")
		cancel()
		last = strings.TrimSpace(out)
		if err == nil && (last == "running" || last == "degraded") {
			return last, nil
		}
		if !s.alive() {
			return "", fmt.Errorf("systemd exited during boot: %v", s.waitErr)
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("timed out after %v; is-system-running said %q", timeout, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *System) logf(format string, a ...any) {
	fmt.Fprintf(s.log, format+"\n", a...)
}

// Name returns the instance's name (also its hostname).
func (s *System) Name() string { return s.name }

// PID returns systemd's host PID.
func (s *System) PID() int { return s.pid }

// CgroupDir returns the host path of the instance's cgroup2 subtree (the root of its cgroup
// namespace).
func (s *System) CgroupDir() string { return s.cgroup }

// StateDir returns the host directory holding init.sh, init.log and console.log (systemd's
// /dev/console). It is removed by Stop.
func (s *System) StateDir() string { return s.stateDir }

// Root returns /proc/PID/root, the instance's root as seen from the host. Prefer WriteFile
// and ReadFile: plain path lookups below Root resolve absolute symlinks against the host's
// root, not the instance's.
func (s *System) Root() string { return fmt.Sprintf("/proc/%d/root", s.pid) }

// NetNSPath returns /proc/PID/ns/net, so host-side code can join the instance's network
// namespace (e.g. netns.GetFromPath, or setns on a locked OS thread).
func (s *System) NetNSPath() string { return fmt.Sprintf("/proc/%d/ns/net", s.pid) }
