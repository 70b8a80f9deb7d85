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
	"sort"
	"strconv"
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

// Cmd returns the command (for sysexec.Run) that runs argv inside the instance through
// `nsenter -t PID -a`: all of its namespaces, its root and working directory (/). The process
// is cloned into the leaf cgroup harness.exec of the instance's subtree
// (SysProcAttr.UseCgroupFD) and gets its own process group (Setpgid). When the run's ctx is
// done, the group's processes inside are SIGKILLed and nsenter exits after reaping them
// (WaitDelay 2 s, then nsenter is killed too). To end a run early, cancel its ctx rather than
// killing nsenter: that would leave the process inside orphaned to the host's init (see
// killExec). Env is a minimal environment (PATH, LC_ALL=C, HOME=/root, TERM=dumb,
// SYSTEMD_PAGER=, SYSTEMD_COLORS=0); append to it rather than replacing it. Callers that
// replace SysProcAttr should keep those fields.
func (s *System) Cmd(argv ...string) sysexec.Cmd {
	cmd := sysexec.Cmd{
		Path: s.nsenter,
		Args: append([]string{"-t", strconv.Itoa(s.pid), "-a", "--"}, argv...),
		Dir:  "/",
		Env: []string{
			"PATH=" + insidePath, "LC_ALL=C", "HOME=/root", "TERM=dumb",
			"SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "SYSTEMD_LOG_COLOR=0",
		},
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
		Cancel:      func(p *os.Process) error { return s.killExec(p.Pid) },
		WaitDelay:   2 * time.Second,
	}
	if s.execCg != nil {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(s.execCg.Fd())
	}
	return cmd
}

// killExec SIGKILLs what an nsenter started: the members of its process group inside the
// instance, but not nsenter itself, which then reaps its child and exits. Killing nsenter
// first would orphan the child, and an orphan's new parent is the reaper of nsenter's pid
// namespace (the host's init), not the instance's systemd: its zombie would sit in the
// instance and stall systemd-shutdown. With nothing inside yet, nsenter itself is killed.
func (s *System) killExec(nsenterPID int) error {
	cands := map[int]bool{}
	b, _ := os.ReadFile(filepath.Join(s.cgroup, execCgroup, "cgroup.procs"))
	c, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", nsenterPID, nsenterPID))
	for _, f := range strings.Fields(string(b) + " " + string(c)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 && pid != nsenterPID {
			cands[pid] = true
		}
	}
	killed := false
	for pid := range cands {
		if pg, err := unix.Getpgid(pid); err == nil && pg == nsenterPID {
			if unix.Kill(pid, unix.SIGKILL) == nil {
				killed = true
			}
		}
	}
	if !killed {
		return unix.Kill(nsenterPID, unix.SIGKILL)
	}
	return nil
}

// Exec runs argv inside the instance (see Cmd) and returns its output. A non-zero exit is
// reported through exitCode with a nil err; err is set only when the command could not be
// run or did not exit normally (signal, ctx done), and exitCode is then -1.
func (s *System) Exec(ctx context.Context, argv ...string) (stdout, stderr string, exitCode int, err error) {
	res, err := sysexec.Run(ctx, s.Cmd(argv...))
	o, e := string(res.Stdout), string(res.Stderr)
	// A positive Code is a program that exited by itself with that status.
	var se *sysexec.Error
	switch {
	case err == nil:
		return o, e, 0, nil
	case errors.As(err, &se) && se.Started && se.Code > 0 && ctx.Err() == nil:
		return o, e, se.Code, nil
	default:
		if ctx.Err() != nil {
			err = fmt.Errorf("%v: %w", argv, err) // err is ctx.Err(), with the command
		}
		return o, e, -1, err
	}
}

// Systemctl runs systemctl args... inside and returns its stdout. A non-zero exit is an error
// that carries the exit code and stderr; the stdout is returned as well.
func (s *System) Systemctl(ctx context.Context, args ...string) (string, error) {
	out, errOut, code, err := s.Exec(ctx, append([]string{"systemctl"}, args...)...)
	if err != nil {
		return out, err
	}
	if code != 0 {
		return out, fmt.Errorf("systemctl %s: exit %d: %s", strings.Join(args, " "), code, strings.TrimSpace(errOut))
	}
	return out, nil
}

// Show returns properties of unit (`systemctl show --property=...`); with no props, all of
// them. Every requested property is present in the map, possibly with an empty value.
func (s *System) Show(ctx context.Context, unit string, props ...string) (map[string]string, error) {
	args := []string{"show"}
	for _, p := range props {
		args = append(args, "--property="+p)
	}
	args = append(args, "--", unit)
	out, err := s.Systemctl(ctx, args...)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	for _, p := range props {
		if _, ok := m[p]; !ok {
			m[p] = ""
		}
	}
	return m, nil
}

// WaitUnit polls unit's property prop until it equals one of want, or ctx is done; it returns
// the last value seen.
func (s *System) WaitUnit(ctx context.Context, unit, prop string, want ...string) (string, error) {
	last := ""
	for {
		m, err := s.Show(ctx, unit, prop)
		if err == nil {
			last = m[prop]
			for _, w := range want {
				if last == w {
					return last, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("%s %s=%q, want %q: %w", unit, prop, last, want, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Journal returns the journal of the given units (all of it with none) after asking journald
// to flush (`journalctl --sync`), so messages logged before the call are included. Errors are
// returned inline in the text.
func (s *System) Journal(ctx context.Context, units ...string) string {
	_, _, _, _ = s.Exec(ctx, "journalctl", "--sync")
	args := []string{"journalctl", "--no-pager", "-o", "short-precise"}
	for _, u := range units {
		args = append(args, "-u", u)
	}
	out, errOut, code, err := s.Exec(ctx, args...)
	if err != nil || code != 0 {
		out += fmt.Sprintf("\n[journalctl: exit %d, %v: %s]", code, err, strings.TrimSpace(errOut))
	}
	return out
}

// InstallUnit writes /etc/systemd/system/<name> inside (mode 0644) and runs daemon-reload.
func (s *System) InstallUnit(name, text string) error {
	if name == "" || strings.ContainsRune(name, '/') {
		return fmt.Errorf("invalid unit name %q", name)
	}
	if err := s.WriteFile("/etc/systemd/system/"+name, []byte(text), 0o644); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := s.Systemctl(ctx, "daemon-reload")
	return err
}

// HostPID maps a PID of the instance's pid namespace to the host PID, by reading NSpid in
// /proc/<pid>/status of the processes in the instance's cgroup subtree (then, failing that,
// of every process in the instance's pid namespace).
func (s *System) HostPID(nsPID int) (int, error) {
	if nsPID <= 0 {
		return 0, fmt.Errorf("invalid pid %d", nsPID)
	}
	self, err := nsPIDs(s.pid)
	if err != nil {
		return 0, err
	}
	level := len(self) - 1 // systemd is PID 1 at this level
	want := strconv.Itoa(nsPID)
	match := func(pid int) bool {
		ids, err := nsPIDs(pid)
		return err == nil && len(ids) > level && ids[level] == want
	}
	for _, pid := range s.cgroupProcs() {
		if match(pid) {
			return pid, nil
		}
	}
	ourNS, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", s.pid))
	if err != nil {
		return 0, err
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); err == nil && ns == ourNS && match(pid) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no process with pid %d in %s", nsPID, s.name)
}

func nsPIDs(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			return strings.Fields(rest), nil
		}
	}
	return nil, fmt.Errorf("pid %d: no NSpid in status", pid)
}

// cgroupProcs lists the host PIDs of every process in the instance's cgroup subtree.
func (s *System) cgroupProcs() []int {
	var pids []int
	filepath.WalkDir(s.cgroup, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

// Stop powers the instance off (`systemctl poweroff --no-block`; in a container PID 1 then
// simply exits), SIGKILLs systemd if it is still alive after 5 s (which kills every process
// of its pid namespace), removes the cgroup subtree deepest first and the state directory.
// Mounts lived only in the instance's mount namespace and vanish with it. Idempotent; Start
// registers it with t.Cleanup. If the test failed, the tail of the journal and of the console
// log are logged first.
func (s *System) Stop() {
	s.stopOnce.Do(s.stop)
}

func (s *System) stop() {
	t0 := time.Now()
	if s.alive() {
		if s.t.Failed() {
			s.t.Logf("sdharness: %s: test failed; diagnostics:\n%s", s.name, s.diagnostics())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _, _, _ = s.Exec(ctx, "systemctl", "poweroff", "--no-block")
		cancel()
		select {
		case <-s.exited:
		case <-time.After(stopGrace):
			s.logf("sdharness: %s: still alive %v after poweroff; SIGKILL", s.name, stopGrace)
			// We are systemd's parent and have not reaped it: the PID cannot have been reused.
			syscall.Kill(s.pid, syscall.SIGKILL)
			<-s.exited
		}
	}
	if err := removeCgroupTree(s.cgroup, 5*time.Second); err != nil {
		s.t.Errorf("sdharness: %s: %v", s.name, err)
	}
	if err := os.RemoveAll(s.stateDir); err != nil {
		s.t.Errorf("sdharness: %s: %v", s.name, err)
	}
	os.Remove(filepath.Dir(s.stateDir)) // $TMPDIR/sdharness, if no other instance uses it
	s.logf("sdharness: %s: stopped in %.2fs", s.name, time.Since(t0).Seconds())
	s.t.Logf("sdharness: %s stopped in %.2fs", s.name, time.Since(t0).Seconds())
}

// diagnostics returns the tail of the journal and of the init and console logs.
func (s *System) diagnostics() string {
	var b strings.Builder
	if s.alive() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, _, _, _ := s.Exec(ctx, "journalctl", "--no-pager", "-o", "short-precise", "-n", "80")
		cancel()
		fmt.Fprintf(&b, "--- journal (last 80 lines)\n%s", out)
	}
	for _, n := range []string{"init.log", "console.log"} {
		data, _ := os.ReadFile(filepath.Join(s.stateDir, n))
		if len(data) > 8192 {
			data = data[len(data)-8192:]
		}
		fmt.Fprintf(&b, "--- %s\n%s\n", n, data)
	}
	return b.String()
}

// removeCgroupTree rmdirs dir and its subdirectories, deepest first, retrying until timeout
// (a cgroup stays busy for a moment after its last process was reaped).
func removeCgroupTree(dir string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var dirs []string
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		if len(dirs) == 0 {
			return nil
		}
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		var lastErr error
		for _, d := range dirs {
			if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
				lastErr = fmt.Errorf("rmdir %s: %w", d, err)
			}
		}
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			return fmt.Errorf("cgroup %s left behind (procs: %q): %v", dir, strings.TrimSpace(string(procs)), lastErr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// removeStale removes what a test binary that died without running its cleanups left:
// sdharness cgroups older than staleAge with no process in them, and state dirs older than
// staleAge whose cgroup is gone. Young or populated ones may belong to a running test.
func removeStale(cgroot, stateBase string) {
	old := func(fi os.FileInfo) bool { return time.Since(fi.ModTime()) > staleAge }
	ents, _ := os.ReadDir(cgroot)
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), cgroupPrefix) {
			continue
		}
		dir := filepath.Join(cgroot, e.Name())
		fi, err := os.Stat(dir)
		if err != nil || !old(fi) {
			continue
		}
		ev, _ := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if !strings.Contains(string(ev), "populated 0") {
			continue
		}
		removeCgroupTree(dir, 0)
	}
	ents, _ = os.ReadDir(stateBase)
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(cgroot, cgroupPrefix+e.Name())); err == nil {
			continue
		}
		fi, err := e.Info()
		if err != nil || !old(fi) {
			continue
		}
		os.RemoveAll(filepath.Join(stateBase, e.Name()))
	}
}
