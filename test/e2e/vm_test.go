package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guestbuild"
	"github.com/banger-dev/banger/internal/testutil"
)

// vmEnv is an env whose daemon, root helper, bridge, taps, NAT rules and
// guests all live in a network namespace the test creates: no guest
// traffic ever leaves it.
type vmEnv struct {
	*env
	ns     string
	helper *exec.Cmd
}

func newVMEnv(t testing.TB) *vmEnv {
	t.Helper()
	testutil.RequiresGuest(t)
	if _, err := os.Stat(filepath.Join(binDir, "banger-vmm")); err != nil {
		t.Skip("banger-vmm not built")
	}
	// Guest artifacts are built here, outside the namespace (their packages
	// come from the Debian archive); inside it the daemon finds them cached.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := guestbuild.Ensure(ctx, guestOpts()); err != nil {
		t.Fatalf("guest artifacts: %v", err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	v := &vmEnv{env: newEnv(t), ns: "bgt-" + hex.EncodeToString(b)}
	if out, err := exec.Command("ip", "netns", "add", v.ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	exec.Command("ip", "-n", v.ns, "link", "set", "lo", "up").Run()
	os.MkdirAll(filepath.Dir(v.configFile()), 0o700)
	os.WriteFile(v.configFile(), []byte("default_image = \"tiny\"\nstart = \"cold\"\n\n[vm_defaults]\nvcpu = 1\nmemory_mib = 256\ndisk_size = \"128M\"\n"), 0o600)
	t.Cleanup(func() {
		if t.Failed() {
			v.dumpLogs()
		}
		// Delete whatever the test left, then make sure no VMM survives it.
		var vms []api.VM
		json.Unmarshal([]byte(v.banger("vm", "list", "--json").stdout), &vms)
		for _, vm := range vms {
			v.banger("vm", "kill", vm.Name)
		}
		v.banger("vm", "prune", "-f")
		v.banger("daemon", "stop")
		v.stopHelper(syscall.SIGTERM)
		killMatching(v.home)
		exec.Command("ip", "netns", "del", v.ns).Run()
	})
	return v
}

func (v *vmEnv) environ() []string {
	return append(v.env.environ(), "XDG_CACHE_HOME="+filepath.Join(testutil.CacheDir(), "xdg"))
}

// run runs a banger binary inside the test's network namespace.
func (v *vmEnv) runNS(timeout time.Duration, bin string, args ...string) result {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", v.ns, filepath.Join(v.bin, bin)}, args...)...)
	cmd.Env = v.environ()
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		v.t.Fatalf("%s %v: %v", bin, args, err)
	}
	return result{stdout: so.String(), stderr: se.String(), code: code}
}

func (v *vmEnv) banger(args ...string) result { return v.runNS(5*time.Minute, "banger", args...) }

// must runs banger and fails the test on a non-zero exit.
func (v *vmEnv) must(args ...string) string {
	v.t.Helper()
	r := v.banger(args...)
	if r.code != 0 {
		v.t.Fatalf("banger %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func (v *vmEnv) bootID(name string) string {
	v.t.Helper()
	id := strings.TrimSpace(v.must("vm", "exec", name, "--", "cat", "/proc/sys/kernel/random/boot_id"))
	if !uuidRE.MatchString(id) {
		v.t.Fatalf("boot_id %q is not a UUID", id)
	}
	return id
}

func (v *vmEnv) show(name string) api.VM {
	v.t.Helper()
	var vm api.VM
	if err := json.Unmarshal([]byte(v.must("vm", "show", name, "--json")), &vm); err != nil {
		v.t.Fatal(err)
	}
	return vm
}

func (v *vmEnv) state(name string) string {
	v.t.Helper()
	var vms []api.VM
	json.Unmarshal([]byte(v.must("vm", "list", "--json")), &vms)
	for _, vm := range vms {
		if vm.Name == name {
			return vm.State
		}
	}
	return "absent"
}

// startHelper runs the root helper in the namespace, as systemd would.
func (v *vmEnv) startHelper() {
	v.t.Helper()
	cmd := exec.Command("ip", "netns", "exec", v.ns, filepath.Join(v.bin, "bangerd"), "--root-helper")
	cmd.Env = v.environ()
	logf, _ := os.OpenFile(filepath.Join(v.home, "helper.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		v.t.Fatal(err)
	}
	go cmd.Wait()
	v.helper = cmd
	sock := filepath.Join(v.run, "banger", "bangerd-root.sock")
	waitFor(v.t, func() bool { _, err := os.Stat(sock); return err == nil })
}

func (v *vmEnv) stopHelper(sig syscall.Signal) {
	if v.helper == nil || v.helper.Process == nil {
		return
	}
	pid := v.helper.Process.Pid
	syscall.Kill(pid, sig)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && syscall.Kill(pid, 0) == nil {
		time.Sleep(50 * time.Millisecond)
	}
	v.helper = nil
}

func (v *vmEnv) daemonPID() int {
	v.t.Helper()
	var st api.DaemonStatus
	json.Unmarshal([]byte(v.must("daemon", "status", "--json")), &st)
	return st.PID
}

func (v *vmEnv) taps() []string {
	out, _ := exec.Command("ip", "-n", v.ns, "-o", "link", "show").Output()
	var taps []string
	for _, m := range regexp.MustCompile(`\d+: (bgtap[0-9a-f]+)`).FindAllStringSubmatch(string(out), -1) {
		taps = append(taps, m[1])
	}
	return taps
}

func (v *vmEnv) ruleset() string {
	out, _ := exec.Command("ip", "netns", "exec", v.ns, "nft", "list", "ruleset").CombinedOutput()
	return string(out)
}

func (v *vmEnv) vmDirs() []string {
	ents, _ := os.ReadDir(filepath.Join(v.home, ".local", "state", "banger", "vms"))
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func (v *vmEnv) dumpLogs() {
	for _, f := range []string{filepath.Join(v.home, ".local", "state", "banger", "bangerd.log"), filepath.Join(v.home, "helper.log")} {
		if b, err := os.ReadFile(f); err == nil {
			v.t.Logf("==== %s (tail)\n%s", f, tail(string(b), 4000))
		}
	}
	matches, _ := filepath.Glob(filepath.Join(v.home, ".local", "state", "banger", "vms", "*", "serial.log"))
	for _, f := range matches {
		b, _ := os.ReadFile(f)
		v.t.Logf("==== %s (tail)\n%s", f, tail(string(b), 3000))
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// killMatching SIGKILLs any process whose command line mentions marker.
func killMatching(marker string) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if bytes.Contains(b, []byte(marker)) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func TestVMRunExitCodesAndNothingLeftBehind(t *testing.T) {
	v := newVMEnv(t)
	r := v.banger("vm", "run", "--rm", "--", "sh", "-c", "exit 42")
	if r.code != 42 {
		t.Fatalf("exit code %d, want 42\n%s", r.code, r.stderr)
	}
	r = v.banger("vm", "run", "--rm", "--nat", "--name", "once", "--", "cat", "/proc/sys/kernel/random/boot_id")
	if r.code != 0 || !uuidRE.MatchString(strings.TrimSpace(r.stdout)) {
		t.Fatalf("boot_id run: %d %q %q", r.code, r.stdout, r.stderr)
	}
	r = v.banger("vm", "run", "--rm", "--", "sh", "-c", "kill -TERM $$")
	if r.code != 143 {
		t.Fatalf("signal exit %d, want 143", r.code)
	}
	if vms := strings.TrimSpace(v.must("vm", "list", "--json")); vms != "[]" {
		t.Fatalf("VM rows left: %s", vms)
	}
	if taps := v.taps(); len(taps) != 0 {
		t.Fatalf("taps left: %v", taps)
	}
	if rs := v.ruleset(); strings.Contains(rs, "172.30.0.") {
		t.Fatalf("per-VM nft rules left:\n%s", rs)
	}
	if dirs := v.vmDirs(); len(dirs) != 0 {
		t.Fatalf("VM dirs (disks, pidfiles) left: %v", dirs)
	}
}

func TestVMStopStartKeepsDataAndReboots(t *testing.T) {
	v := newVMEnv(t)
	v.must("vm", "create", "--name", "keeper")
	v.must("vm", "exec", "keeper", "--", "sh", "-c", "echo kept-data > /root/f")
	b1 := v.bootID("keeper")
	v.must("vm", "stop", "keeper")
	if s := v.state("keeper"); s != "stopped" {
		t.Fatalf("state after stop: %s", s)
	}
	v.must("vm", "start", "keeper")
	if got := strings.TrimSpace(v.must("vm", "exec", "keeper", "--", "cat", "/root/f")); got != "kept-data" {
		t.Fatalf("/root/f after stop/start: %q", got)
	}
	b2 := v.bootID("keeper")
	if b1 == b2 {
		t.Fatal("boot_id unchanged after stop/start")
	}
	v.must("vm", "restart", "keeper")
	if b3 := v.bootID("keeper"); b3 == b2 {
		t.Fatal("boot_id unchanged after restart")
	}
	if vm := v.show("keeper"); vm.Runtime.VMMKind != "banger-vmm" || vm.State != "running" {
		t.Fatalf("show: %+v", vm)
	}
}

func TestVMSurvivesHelperAndDaemonRestarts(t *testing.T) {
	v := newVMEnv(t)
	v.startHelper()
	v.must("vm", "create", "--name", "survivor", "--nat")
	b1 := v.bootID("survivor")
	vmmPID := v.show("survivor").Runtime.PID

	// SIGTERM to the root helper, which launched the VMM: no signal is
	// forwarded, the VMM lives in its own session.
	v.stopHelper(syscall.SIGTERM)
	if syscall.Kill(vmmPID, 0) != nil {
		t.Fatal("VMM died with the root helper")
	}
	v.startHelper()
	if b := v.bootID("survivor"); b != b1 {
		t.Fatalf("boot_id changed across a helper restart: %s → %s", b1, b)
	}
	if s := v.state("survivor"); s != "running" {
		t.Fatalf("state after helper restart: %s", s)
	}

	// SIGKILL to the daemon; the next CLI call starts a new one, which
	// re-adopts the VM.
	pid := v.daemonPID()
	syscall.Kill(pid, syscall.SIGKILL)
	waitFor(t, func() bool { return syscall.Kill(pid, 0) != nil })
	if s := v.state("survivor"); s != "running" {
		t.Fatalf("state after daemon SIGKILL: %s", s)
	}
	if v.daemonPID() == pid {
		t.Fatal("daemon was not restarted")
	}
	if b := v.bootID("survivor"); b != b1 {
		t.Fatalf("boot_id changed across a daemon restart: %s → %s", b1, b)
	}
	if p := v.show("survivor").Runtime.PID; p != vmmPID {
		t.Fatalf("VMM pid changed: %d → %d", vmmPID, p)
	}
}

func TestVMMKilledBehindBanger(t *testing.T) {
	v := newVMEnv(t)
	v.must("vm", "create", "--name", "victim", "--nat")
	vm := v.show("victim")
	if len(v.taps()) != 1 || !strings.Contains(v.ruleset(), vm.IP) {
		t.Fatalf("expected a tap and NAT rules for %s", vm.IP)
	}
	v.must("daemon", "stop")
	syscall.Kill(vm.Runtime.PID, syscall.SIGKILL)
	waitFor(t, func() bool { return syscall.Kill(vm.Runtime.PID, 0) != nil })
	after := v.show("victim") // starts a new daemon, which reconciles
	if after.State != "stopped" || !strings.Contains(after.Runtime.StopReason, "VMM was gone") {
		t.Fatalf("after restart: state %s reason %q", after.State, after.Runtime.StopReason)
	}
	if taps := v.taps(); len(taps) != 0 {
		t.Fatalf("taps left: %v", taps)
	}
	if strings.Contains(v.ruleset(), vm.IP) {
		t.Fatalf("NAT rules for %s left", vm.IP)
	}
	// And it starts again.
	v.must("vm", "start", "victim")
	v.bootID("victim")
}

func TestTwoVMsDistinctIPs(t *testing.T) {
	v := newVMEnv(t)
	v.must("vm", "create", "--name", "one")
	v.must("vm", "create", "--name", "two")
	a, b := v.show("one"), v.show("two")
	if a.IP == b.IP || a.IP == "" {
		t.Fatalf("IPs %q and %q", a.IP, b.IP)
	}
	if v.bootID("one") == v.bootID("two") {
		t.Fatal("two VMs answered with one boot_id")
	}
	if got := strings.TrimSpace(v.must("vm", "exec", "two", "--", "hostname")); got != "two" {
		t.Fatalf("hostname %q", got)
	}
}

func TestVMBadInputsCreateNothing(t *testing.T) {
	v := newVMEnv(t)
	v.must("vm", "create", "--name", "taken", "--no-start")
	before := v.vmDirs()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--name", "Bad_Name"}, `invalid VM name "Bad_Name"`},
		{[]string{"--name", "taken"}, `a VM named "taken" already exists`},
		{[]string{"--name", "x1", "--vcpu", "0"}, "invalid --vcpu 0"},
		{[]string{"--name", "x2", "--memory", "0"}, "invalid --memory 0"},
		{[]string{"--name", "x3", "--image", "nosuch"}, `unknown image "nosuch"`},
	} {
		r := v.banger(append([]string{"vm", "create"}, c.args...)...)
		if r.code == 0 || !strings.HasPrefix(r.stderr, "banger: ") || !strings.Contains(r.stderr, c.want) || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q (want one line with %q)", c.args, r.code, r.stderr, c.want)
		}
	}
	var vms []api.VM
	json.Unmarshal([]byte(v.must("vm", "list", "--json")), &vms)
	if len(vms) != 1 || len(v.vmDirs()) != len(before) || len(v.taps()) != 0 {
		t.Fatalf("bad input left something: %d VMs, dirs %v, taps %v", len(vms), v.vmDirs(), v.taps())
	}
}

func TestImageDeleteRefusedWhileInUse(t *testing.T) {
	v := newVMEnv(t)
	v.must("vm", "create", "--name", "user1", "--no-start")
	var ims []api.Image
	json.Unmarshal([]byte(v.must("image", "list", "--json")), &ims)
	if len(ims) != 1 || ims[0].Name != "tiny" || len(ims[0].UsedBy) != 1 || ims[0].UsedBy[0] != "user1" {
		t.Fatalf("image list: %+v", ims)
	}
	r := v.banger("image", "delete", "tiny")
	if r.code == 0 || !strings.Contains(r.stderr, "image tiny is used by VM(s) user1; delete them first") || strings.Count(r.stderr, "\n") != 1 {
		t.Fatalf("delete of an image in use: %d %q", r.code, r.stderr)
	}
	rootfs := ims[0].Rootfs
	if _, err := os.Stat(rootfs); err != nil {
		t.Fatalf("refused delete removed the rootfs: %v", err)
	}
	v.must("vm", "delete", "user1")
	v.must("image", "delete", "tiny")
	if out := strings.TrimSpace(v.must("image", "list", "--json")); out != "[]" {
		t.Fatalf("image still listed: %s", out)
	}
	if _, err := os.Stat(rootfs); err == nil {
		t.Fatal("rootfs left after delete")
	}
	// A built-in image comes back on next use.
	v.must("vm", "create", "--name", "user2", "--no-start")
	if out := v.must("image", "show", "tiny", "--json"); !strings.Contains(out, `"user2"`) {
		t.Fatalf("image show: %s", out)
	}
}
