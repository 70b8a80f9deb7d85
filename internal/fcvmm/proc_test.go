package fcvmm

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
	buildSkip string
	buildDir  string
)

// vmmBinary builds cmd/banger-vmm once per test run (or uses the binary
// named by FCVMM_TEST_BIN, e.g. one built with -race).
func vmmBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if b := os.Getenv("FCVMM_TEST_BIN"); b != "" {
			builtBin = b
			return
		}
		goBin, err := exec.LookPath("go")
		if err != nil {
			buildSkip = "no go toolchain to build banger-vmm: " + err.Error()
			return
		}
		buildDir, buildErr = os.MkdirTemp("", "banger-vmm-test-")
		if buildErr != nil {
			return
		}
		builtBin = filepath.Join(buildDir, "banger-vmm")
		out, err := exec.Command(goBin, "build", "-o", builtBin, "github.com/banger-dev/banger/cmd/banger-vmm").CombinedOutput()
		if err != nil {
			buildErr = errors.New(err.Error() + ": " + string(out))
		}
	})
	if buildSkip != "" {
		t.Skip(buildSkip)
	}
	if buildErr != nil {
		t.Fatalf("cannot build banger-vmm: %v", buildErr)
	}
	return builtBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

func run(t *testing.T, bin string, args ...string) (stdout, stderr string, ws syscall.WaitStatus) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%s %q: %v", bin, args, err)
	}
	return o.String(), e.String(), cmd.ProcessState.Sys().(syscall.WaitStatus)
}

func TestCLIVersionAndArguments(t *testing.T) {
	if testing.Short() {
		t.Skip("builds banger-vmm; skipped with -short")
	}
	bin := vmmBinary(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")

	out, _, ws := run(t, bin, "--version")
	if out != "Firecracker v1.14.1\n\n" || ws.ExitStatus() != 0 {
		t.Errorf("--version: %q, status %v", out, ws)
	}
	for _, args := range [][]string{
		{"--api-sock", sock, "--bogus"},
		{"--api-sock", sock, "--no-seccomp", "--seccomp-filter", "/f"},
		{"--api-sock"},
		{"--api-sock", sock, "--id", "a", "--id", "b"},
	} {
		_, errOut, ws := run(t, bin, args...)
		if ws.ExitStatus() != 153 {
			t.Errorf("%q: status %v, want exit 153 (stderr %q)", args, ws, errOut)
		}
	}
	if _, err := os.Lstat(sock); err == nil {
		t.Error("a failed argument parse created the socket")
	}

	// An invalid --id aborts before the socket exists, like Firecracker's panic.
	_, errOut, ws := run(t, bin, "--api-sock", sock, "--id", "bad_id", "--no-seccomp")
	if !ws.Signaled() || ws.Signal() != syscall.SIGABRT || !strings.Contains(errOut, "Invalid instance ID") {
		t.Errorf("invalid id: status %v, stderr %q", ws, errOut)
	}
	if _, err := os.Lstat(sock); err == nil {
		t.Error("an invalid --id created the socket")
	}

	// An existing path: exit 1 with Firecracker's message, the file untouched.
	if err := os.WriteFile(sock, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, ws = run(t, bin, "--api-sock", sock, "--id", "vm1", "--no-seccomp")
	if ws.ExitStatus() != 1 || !strings.Contains(out, "Failed to open the API socket at: "+sock+". Check that it is not already used.") {
		t.Errorf("existing socket path: status %v, stdout %q", ws, out)
	}
	if b, _ := os.ReadFile(sock); string(b) != "keep" {
		t.Errorf("the existing file was changed: %q", b)
	}
}

// startVMMProcess runs banger-vmm on a fresh socket and waits until it
// answers GET /machine-config, as the SDK does.
// start runs cmd.Start (nil: directly).
func startVMMProcess(t *testing.T, bin string, start func(*exec.Cmd) error) (*exec.Cmd, string, *bytes.Buffer) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	var out bytes.Buffer
	cmd := exec.Command(bin, "--api-sock", sock, "--id", "proc-test", "--no-seccomp")
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if start == nil {
		start = (*exec.Cmd).Start
	}
	if err := start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(3 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return cmd, sock, &out
		}
		if time.Now().After(deadline) {
			t.Fatalf("banger-vmm did not bind %s within 3s: %s", sock, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestProcessSignals(t *testing.T) {
	if testing.Short() {
		t.Skip("builds banger-vmm; skipped with -short")
	}
	bin := vmmBinary(t)
	for _, c := range []struct {
		sig      syscall.Signal
		signaled bool
		code     int
	}{
		{syscall.SIGTERM, true, 0},
		{syscall.SIGINT, true, 0},
		{syscall.SIGQUIT, true, 0},
		{syscall.SIGHUP, false, 156},
	} {
		cmd, sock, out := startVMMProcess(t, bin, nil)
		if b, err := os.ReadFile(procFile(cmd.Process.Pid, "comm")); err != nil || strings.TrimSpace(string(b)) != "firecracker" {
			t.Errorf("comm = %q, %v; want firecracker", b, err)
		}
		// SIGPIPE is ignored.
		cmd.Process.Signal(syscall.SIGPIPE)
		time.Sleep(50 * time.Millisecond)
		cmd.Process.Signal(c.sig)
		err := cmd.Wait()
		ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
		switch {
		case c.signaled && (!ws.Signaled() || ws.Signal() != c.sig):
			t.Errorf("%v: wait status %v (%v), want killed by %v; output %s", c.sig, ws, err, c.sig, out)
		case !c.signaled && ws.ExitStatus() != c.code:
			t.Errorf("%v: wait status %v, want exit %d", c.sig, ws, c.code)
		}
		if _, err := os.Lstat(sock); err != nil {
			t.Errorf("%v: the API socket was unlinked: %v", c.sig, err)
		}
	}
}

func procFile(pid int, file string) string {
	return filepath.Join("/proc", strconv.Itoa(pid), file)
}

// TestProcessSurvivesParentAndClosedStdout: the VMM outlives the process that
// started it and keeps serving API clients after its stdout pipe lost its
// reader (log lines then fail with EPIPE, which must not kill it).
func TestProcessSurvivesParentAndClosedStdout(t *testing.T) {
	if testing.Short() {
		t.Skip("builds banger-vmm; skipped with -short")
	}
	bin := vmmBinary(t)
	sock := filepath.Join(t.TempDir(), "api.sock")
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// An intermediate parent starts the VMM in the background and exits.
	parent := exec.Command("/bin/sh", "-c", `"$0" --api-sock "$1" --id orphan --no-seccomp </dev/null & echo $!`, bin, sock)
	parent.Stdout = pw
	parent.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	parent.Wait()
	var line []byte
	buf := make([]byte, 1)
	for {
		n, err := pr.Read(buf)
		if n == 0 || err != nil || buf[0] == '\n' {
			break
		}
		line = append(line, buf[0])
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(line)))
	if err != nil {
		t.Fatalf("pid %q: %v", line, err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	pr.Close() // nobody reads the VMM's stdout any more

	deadline := time.Now().Add(3 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the orphaned VMM did not bind its socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	tv := &testVMM{sock: sock, client: clientFor(sock)}
	for i := 0; i < 20; i++ { // each request logs to the dead stdout
		expect(t, "GET /machine-config", tv.do(t, "GET", "/machine-config", ""), 200, "")
	}
	if st := procState(pid); st == "" || st == "Z" {
		t.Fatalf("the VMM died (state %q)", st)
	}
	// A restarted supervisor re-attaches: a new connection still works.
	r := tv.do(t, "GET", "/", "")
	if !strings.Contains(r.body, `"id":"orphan"`) {
		t.Errorf("GET / = %s", r.body)
	}
	syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 200 && procState(pid) != "" && procState(pid) != "Z"; i++ {
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConfigFileErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("builds banger-vmm; skipped with -short")
	}
	bin := vmmBinary(t)
	dir := t.TempDir()
	_, _, ws := run(t, bin, "--no-api")
	if ws.ExitStatus() != 153 {
		t.Errorf("--no-api without --config-file: %v", ws)
	}
	kernel := filepath.Join(dir, "bzImage")
	os.WriteFile(kernel, append(make([]byte, 0x202), []byte("HdrS")...), 0o644)
	for name, cfg := range map[string]string{
		"unknown key": `{"boot-source":{"kernel_image_path":"` + kernel + `"},"bogus":1}`,
		"bzImage":     `{"boot-source":{"kernel_image_path":"` + kernel + `"},"machine-config":{"vcpu_count":1,"mem_size_mib":128}}`,
		"not JSON":    `{`,
	} {
		p := filepath.Join(dir, "cfg.json")
		os.WriteFile(p, []byte(cfg), 0o644)
		out, _, ws := run(t, bin, "--no-api", "--config-file", p, "--id", "cfg")
		if ws.ExitStatus() != 152 {
			t.Errorf("%s: status %v, want 152; output %s", name, ws, out)
		}
	}
}
