package fcvmm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	firecracker "github.com/firecracker-microvm/firecracker-go-sdk"
	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"
	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/guestbuild"
)

// These tests boot the real guest (internal/guestbuild) under banger-vmm,
// driven by firecracker-go-sdk v1.0.0 exactly as banger drives Firecracker,
// with a tap inside a network namespace the test creates and deletes.

const bootTimeout = 120 * time.Second

type bootEnv struct {
	bin      string
	art      guestbuild.Artifacts
	signer   ssh.Signer
	authKeys []byte
}

var (
	envOnce sync.Once
	envVal  *bootEnv
	envErr  error
	envSkip string
)

func bootPrereqs(t testing.TB) *bootEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a VM; skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces and taps)")
	}
	for _, tool := range []string{qemuBinary(), "ip", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	bin := vmmBinary(t)
	envOnce.Do(func() {
		cache := os.Getenv("BANGER_TEST_CACHE")
		if cache == "" {
			cache = "/var/cache/banger-test"
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		var prog bytes.Buffer
		art, err := guestbuild.Ensure(ctx, guestbuild.Options{CacheDir: cache, Progress: &prog})
		if err != nil {
			envErr = fmt.Errorf("guestbuild.Ensure: %v\n%s", err, prog.String())
			return
		}
		_, key, _ := ed25519.GenerateKey(rand.Reader)
		signer, err := ssh.NewSignerFromKey(key)
		if err != nil {
			envErr = err
			return
		}
		envVal = &bootEnv{bin: bin, art: art, signer: signer, authKeys: ssh.MarshalAuthorizedKey(signer.PublicKey())}
	})
	if envSkip != "" {
		t.Skip(envSkip)
	}
	if envErr != nil {
		t.Fatal(envErr)
	}
	return envVal
}

// netns is a network namespace holding tap0 (172.31.99.1/24).
type netns struct {
	name string
}

func newNetns(t *testing.T) *netns {
	t.Helper()
	ns := &netns{name: fmt.Sprintf("bvmm%d%d", os.Getpid()%100000, time.Now().UnixNano()%100000)}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", ns.name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns.name).Run() })
	ip("-n", ns.name, "link", "set", "lo", "up")
	ip("-n", ns.name, "tuntap", "add", "dev", "tap0", "mode", "tap")
	ip("-n", ns.name, "addr", "add", "172.31.99.1/24", "dev", "tap0")
	ip("-n", ns.name, "link", "set", "tap0", "up")
	return ns
}

// do runs fn on an OS thread that has joined the namespace: processes it
// forks and sockets it creates belong to the namespace. The thread goes
// back to the original namespace afterwards, or is discarded if it cannot.
func (ns *netns) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return // the locked thread is discarded
		}
		defer unix.Close(orig)
		target, err := unix.Open("/var/run/netns/"+ns.name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		err = unix.Setns(target, unix.CLONE_NEWNET)
		unix.Close(target)
		if err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// newVMMProcess prepares one banger-vmm process in dir (API socket, serial
// log, VMM log; its own session) for the SDK to start, and returns it with
// its instance id.
func newVMMProcess(t *testing.T, env *bootEnv, ns *netns, dir, name string) (*bootedVM, string) {
	t.Helper()
	vm := &bootedVM{sock: filepath.Join(dir, "fc.sock"), serial: filepath.Join(dir, "serial.log"), logPath: filepath.Join(dir, "fc.log"), ns: ns, env: env, sdkLog: &bytes.Buffer{}}
	serial, err := os.Create(vm.serial)
	if err != nil {
		t.Fatal(err)
	}
	// Open until the test ends: the SDK starts the process later.
	t.Cleanup(func() { serial.Close() })
	id := fmt.Sprintf("%s-%d", name, time.Now().UnixNano()%1000000)
	vm.cmd = exec.Command(env.bin, "--api-sock", vm.sock, "--id", id, "--no-seccomp")
	vm.cmd.Stdout = serial
	vm.cmd.Stderr = serial
	vm.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	return vm, id
}

// bootedVM is one banger-vmm started through the SDK.
type bootedVM struct {
	m       *firecracker.Machine
	cmd     *exec.Cmd
	sock    string
	serial  string
	sdkLog  *bytes.Buffer
	logPath string
	started time.Time
	ns      *netns
	env     *bootEnv
}

func bootVM(t *testing.T, env *bootEnv, ns *netns, name string, opts ...func(*firecracker.Config)) *bootedVM {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "root.ext4")
	if out, err := exec.Command("cp", "--sparse=always", env.art.Rootfs, root).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	home := filepath.Join(dir, "home")
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	os.WriteFile(filepath.Join(home, ".ssh", "authorized_keys"), env.authKeys, 0o600)
	work := filepath.Join(dir, "work.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", home, work, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}

	vm, id := newVMMProcess(t, env, ns, dir, name)

	cfg := firecracker.Config{
		SocketPath:      vm.sock,
		KernelImagePath: env.art.Vmlinux,
		InitrdPath:      env.art.Initrd,
		KernelArgs:      "console=ttyS0 reboot=k panic=1 quiet banger.ip=172.31.99.2/24 banger.gw=172.31.99.1 banger.hostname=" + name,
		// The DrivesBuilder PUTs the work disk first and the root last;
		// the guest must still see the root as vda and the work disk as vdb.
		Drives: firecracker.NewDrivesBuilder(root).AddDrive(work, false).Build(),
		NetworkInterfaces: []firecracker.NetworkInterface{{
			StaticConfiguration: &firecracker.StaticNetworkConfiguration{HostDevName: "tap0", MacAddress: "06:00:ac:1f:63:02"},
		}},
		MachineCfg:     models.MachineConfiguration{VcpuCount: firecracker.Int64(1), MemSizeMib: firecracker.Int64(256)},
		VMID:           id,
		LogPath:        vm.logPath,
		LogLevel:       "Info",
		ForwardSignals: []os.Signal{},
	}
	for _, o := range opts {
		o(&cfg)
	}
	lg := logrus.New()
	lg.SetOutput(vm.sdkLog)
	lg.SetLevel(logrus.DebugLevel)
	ctx := context.Background() // must outlive the VM: cancelling it kills the VMM
	var err error
	vm.m, err = firecracker.NewMachine(ctx, cfg, firecracker.WithProcessRunner(vm.cmd), firecracker.WithLogger(logrus.NewEntry(lg)))
	if err != nil {
		t.Fatalf("NewMachine: %v", err)
	}
	vm.started = time.Now()
	if err := ns.do(func() error { return vm.m.Start(ctx) }); err != nil {
		t.Fatalf("Start: %v\nSDK log:\n%s\nserial:\n%s", err, vm.sdkLog, vm.log())
	}
	vm.killAtEnd(t, name)
	return vm
}

// killAtEnd has the test's cleanup kill the VM's QEMU and VMM, and log the
// VMM's log, the SDK's and the serial console if the test failed.
func (vm *bootedVM) killAtEnd(t *testing.T, name string) {
	t.Cleanup(func() {
		if vm.cmd.Process != nil {
			if q := vm.qemuPID(); q > 0 {
				unix.Kill(q, unix.SIGKILL)
			}
			vm.cmd.Process.Kill()
		}
		vm.m.Wait(context.Background())
		if t.Failed() {
			b, _ := os.ReadFile(vm.logPath)
			t.Logf("%s VMM log:\n%s\nSDK log:\n%s\nserial:\n%s", name, b, vm.sdkLog, vm.log())
		}
	})
}

func (vm *bootedVM) log() string {
	b, _ := os.ReadFile(vm.serial)
	return string(b)
}

var readyRE = regexp.MustCompile(`(?m)^BANGER-READY boot_id=([0-9a-f-]{36})\r?$`)

// waitReady waits for the guest's BANGER-READY line and returns its boot id.
func (vm *bootedVM) waitReady(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(bootTimeout)
	for time.Now().Before(deadline) {
		if m := readyRE.FindStringSubmatch(vm.log()); m != nil {
			t.Logf("BANGER-READY %.2fs after Start", time.Since(vm.started).Seconds())
			return m[1]
		}
		if vm.exited() {
			t.Fatalf("the VMM exited before the guest was ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no BANGER-READY within %v", bootTimeout)
	return ""
}

func (vm *bootedVM) exited() bool {
	return unix.Kill(vm.cmd.Process.Pid, 0) != nil || procState(vm.cmd.Process.Pid) == "Z"
}

// qemuPID is the VMM's child (QEMU), from /proc/<pid>/task/*/children.
func (vm *bootedVM) qemuPID() int {
	tasks, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(vm.cmd.Process.Pid), "task", "*", "children"))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, w := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(w); err == nil {
				return pid
			}
		}
	}
	return 0
}

// procState is the state letter of /proc/<pid>/stat ("" once it is gone).
func procState(pid int) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2 : i+3]
	}
	return ""
}

func waitGone(t *testing.T, pid int, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if st := procState(pid); st == "" || st == "Z" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("%s (pid %d) is still running", what, pid)
}

// ssh runs a command in the guest over the tap, from inside the namespace.
func (vm *bootedVM) ssh(t *testing.T, command string) (string, error) {
	t.Helper()
	return vm.sshTimeout(t, command, 30*time.Second)
}

// sshTimeout is ssh with a deadline on the whole exchange: a command that
// stops the guest (poweroff, reboot) never gets an answer.
func (vm *bootedVM) sshTimeout(t *testing.T, command string, timeout time.Duration) (string, error) {
	t.Helper()
	var conn net.Conn
	err := vm.ns.do(func() error {
		var err error
		for i := 0; i < 50; i++ {
			if conn, err = net.DialTimeout("tcp", "172.31.99.2:22", 2*time.Second); err == nil {
				return nil
			}
			time.Sleep(200 * time.Millisecond)
		}
		return err
	})
	if err != nil {
		return "", err
	}
	conn.SetDeadline(time.Now().Add(timeout))
	c, chans, reqs, err := ssh.NewClientConn(conn, "172.31.99.2:22", &ssh.ClientConfig{
		User:            "root",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(vm.env.signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
		Timeout:         20 * time.Second,
	})
	if err != nil {
		conn.Close()
		return "", err
	}
	client := ssh.NewClient(c, chans, reqs)
	defer client.Close()
	s, err := client.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	out, err := s.CombinedOutput(command)
	return string(out), err
}

// TestBootSDK boots the guest through the SDK, checks it over SSH and through
// the API, powers it off (the VMM stays), and SIGKILLs the VMM: QEMU must die
// with it.
func TestBootSDK(t *testing.T) {
	env := bootPrereqs(t)
	ns := newNetns(t)
	vm := bootVM(t, env, ns, "sdk")
	bootID := vm.waitReady(t)

	t0 := time.Now()
	out, err := vm.ssh(t, "cat /proc/sys/kernel/random/boot_id; cat /proc/cmdline; cat /sys/block/vda/ro /sys/block/vdb/ro; awk '$2==\"/root\"{print $1}' /proc/mounts; cat /sys/class/net/eth0/address")
	if err != nil {
		t.Fatalf("ssh: %v %s", err, out)
	}
	t.Logf("ssh answered %.2fs after Start (first command %.2fs)", time.Since(vm.started).Seconds(), time.Since(t0).Seconds())
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 6 {
		t.Fatalf("ssh output: %q", out)
	}
	if lines[0] != bootID {
		t.Errorf("boot_id over ssh %q, BANGER-READY said %q", lines[0], bootID)
	}
	for _, want := range []string{"console=ttyS0", "root=/dev/vda rw", "pci=off", "banger.ip=172.31.99.2/24"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("guest cmdline %q lacks %q", lines[1], want)
		}
	}
	if lines[2] != "0" || lines[3] != "0" || lines[4] != "/dev/vdb" || lines[5] != "06:00:ac:1f:63:02" {
		t.Errorf("vda ro=%s vdb ro=%s /root on %s mac %s", lines[2], lines[3], lines[4], lines[5])
	}

	ctx := context.Background()
	info, err := vm.m.DescribeInstanceInfo(ctx)
	if err != nil || *info.State != "Running" || *info.AppName != "Firecracker" || *info.VmmVersion != "1.14.1" {
		t.Errorf("DescribeInstanceInfo: %+v %v", info, err)
	}
	if v, err := vm.m.GetFirecrackerVersion(ctx); err != nil || v != "1.14.1" {
		t.Errorf("GetFirecrackerVersion: %q %v", v, err)
	}
	if err := vm.m.PauseVM(ctx); err != nil {
		t.Errorf("PauseVM: %v", err)
	}
	if info, _ := vm.m.DescribeInstanceInfo(ctx); info.State == nil || *info.State != "Paused" {
		t.Errorf("state after PauseVM: %v", info.State)
	}
	if err := vm.m.ResumeVM(ctx); err != nil {
		t.Errorf("ResumeVM: %v", err)
	}
	if out, err := vm.ssh(t, "echo alive"); err != nil || strings.TrimSpace(out) != "alive" {
		t.Errorf("ssh after resume: %q %v", out, err)
	}

	// A restarted supervisor re-attaches with a new client.
	c := firecracker.NewClient(vm.sock, logrus.NewEntry(logrus.New()), false)
	if mc, err := c.GetMachineConfiguration(); err != nil || *mc.Payload.MemSizeMib != 256 {
		t.Errorf("re-attached GetMachineConfiguration: %v", err)
	}

	// pgrep -f <api-sock> finds only the VMM; its comm is "firecracker".
	vmmPID, qemu := vm.cmd.Process.Pid, vm.qemuPID()
	if qemu == 0 {
		t.Fatal("no QEMU child")
	}
	var holders []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte(vm.sock)) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			holders = append(holders, pid)
		}
	}
	if len(holders) != 1 || holders[0] != vmmPID {
		t.Errorf("processes naming the API socket: %v, want only the VMM %d", holders, vmmPID)
	}
	if b, _ := os.ReadFile(procFile(vmmPID, "comm")); strings.TrimSpace(string(b)) != "firecracker" {
		t.Errorf("VMM comm %q", b)
	}
	if b, _ := os.ReadFile(vm.logPath); !strings.Contains(string(b), ":INFO] The API server received a Put request on \"/actions\"") {
		t.Errorf("PUT /logger file lacks request lines:\n%s", b)
	}

	// A guest power-off stops the guest; the VMM stays, still "Running".
	go vm.sshTimeout(t, "poweroff -f", 5*time.Second) // never answers
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(vm.logPath); strings.Contains(string(b), "The guest powered off") {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(vm.log(), "reboot: Power down") {
		t.Errorf("the guest did not power off")
	}
	time.Sleep(500 * time.Millisecond)
	if vm.exited() || procState(qemu) == "" {
		t.Fatalf("the VMM or QEMU ended after a guest power-off")
	}
	if info, err := vm.m.DescribeInstanceInfo(ctx); err != nil || *info.State != "Running" {
		t.Errorf("after power-off: %v %v", info.State, err)
	}

	// kill -9 the VMM: QEMU dies with it (PR_SET_PDEATHSIG).
	unix.Kill(vmmPID, unix.SIGKILL)
	err = vm.m.Wait(ctx)
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Wait after SIGKILL: %v", err)
	}
	waitGone(t, qemu, "QEMU after kill -9 of the VMM")
}

// TestBootSIGTERM: SIGTERM (the SDK's StopVMM) kills QEMU and the VMM dies by
// SIGTERM, so the SDK's Wait reports it.
func TestBootSIGTERM(t *testing.T) {
	env := bootPrereqs(t)
	ns := newNetns(t)
	vm := bootVM(t, env, ns, "term")
	qemu := vm.qemuPID()
	if qemu == 0 {
		t.Fatal("no QEMU child")
	}
	if err := vm.m.StopVMM(); err != nil {
		t.Fatal(err)
	}
	err := vm.m.Wait(context.Background())
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("Wait: %v", err)
	}
	if ws := ee.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("VMM wait status %v, want killed by SIGTERM", ws)
	}
	waitGone(t, qemu, "QEMU after SIGTERM to the VMM")
}

// TestBootReboot: a guest reboot ends the VMM with status 0, both through
// SendCtrlAltDel (the guest's ctrlaltdel action is reboot) and `reboot -f`.
func TestBootReboot(t *testing.T) {
	env := bootPrereqs(t)
	for _, how := range []string{"SendCtrlAltDel", "reboot -f"} {
		t.Run(strings.ReplaceAll(how, " ", "_"), func(t *testing.T) {
			ns := newNetns(t)
			vm := bootVM(t, env, ns, "reboot")
			vm.waitReady(t)
			qemu := vm.qemuPID()
			t0 := time.Now()
			if how == "SendCtrlAltDel" {
				if err := vm.m.Shutdown(context.Background()); err != nil {
					t.Fatalf("Shutdown (SendCtrlAltDel): %v", err)
				}
			} else {
				// The session never completes: the guest is gone.
				go vm.sshTimeout(t, "reboot -f", 5*time.Second)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := vm.m.Wait(ctx); err != nil {
				t.Fatalf("Wait after %s: %v, want a clean exit", how, err)
			}
			t.Logf("%s: the VMM exited 0 after %.2fs", how, time.Since(t0).Seconds())
			if !strings.Contains(vm.log(), "reboot: Restarting system") {
				t.Errorf("the guest did not reboot")
			}
			waitGone(t, qemu, "QEMU after the guest rebooted")
		})
	}
}

// TestBootTapAndMACRules: taps are opened at PUT time, in the VMM's network
// namespace, and MACs must be unique.
func TestBootTapAndMACRules(t *testing.T) {
	env := bootPrereqs(t)
	ns := newNetns(t)
	if out, err := exec.Command("ip", "-n", ns.name, "tuntap", "add", "dev", "tap1", "mode", "tap").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	_, sock, _ := startVMMProcess(t, env.bin, func(c *exec.Cmd) error { return ns.do(c.Start) })
	tv := &testVMM{sock: sock, client: clientFor(sock)}
	expect(t, "tap0", tv.do(t, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01"}`), 204, "")
	expect(t, "same MAC", tv.do(t, "PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap1","guest_mac":"06:00:00:00:00:01"}`), 400,
		"Network config error: The MAC address is already in use: 06:00:00:00:00:01")
	expect(t, "tap1", tv.do(t, "PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap1","guest_mac":"06:00:00:00:00:02"}`), 204, "")
	expect(t, "eth0 again", tv.do(t, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:03"}`), 204, "")
	expect(t, "tap in use", tv.do(t, "PUT", "/network-interfaces/eth2", `{"iface_id":"eth2","host_dev_name":"tap1"}`), 400,
		"Network config error: The host device name is already in use: tap1")
	expect(t, "bad MAC", tv.do(t, "PUT", "/network-interfaces/eth3", `{"iface_id":"eth3","host_dev_name":"tap1","guest_mac":"zz"}`), 400,
		"An error occurred when deserializing the json body of a request: Invalid MAC address: zz.")
}

// TestBootVsock: PUT /vsock (through the SDK's VsockDevices) gives the guest
// a virtio-serial port named banger.agent; host connections to uds_path
// speak Firecracker's CONNECT/OK handshake and reach whatever the guest runs
// on the port, one connection at a time.
func TestBootVsock(t *testing.T) {
	env := bootPrereqs(t)
	ns := newNetns(t)
	var uds string
	vm := bootVM(t, env, ns, "vsock", func(c *firecracker.Config) {
		uds = filepath.Join(filepath.Dir(c.SocketPath), "v.sock")
		c.VsockDevices = []firecracker.VsockDevice{{ID: "agent", Path: uds, CID: 3}}
	})
	vm.waitReady(t)

	r, err := clientFor(vm.sock).Get("http://localhost/vm/config")
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]json.RawMessage
	json.NewDecoder(r.Body).Decode(&cfg)
	r.Body.Close()
	if got, want := string(cfg["vsock"]), `{"guest_cid":3,"uds_path":"`+uds+`"}`; got != want {
		t.Errorf("GET /vm/config vsock = %s, want %s", got, want)
	}

	// Nothing runs on the port yet: like a vsock port nobody listens on.
	c, br := dialVsock(t, uds, "CONNECT 1024\n")
	expectClosed(t, "before the guest opened the port", c, br)

	// A guest-side echo on the port. virtio_console lets one process open a
	// port at a time, so it is opened once, read-write.
	out, err := vm.ssh(t, `DEV=; for d in /sys/class/virtio-ports/*; do [ "$(cat $d/name)" = banger.agent ] && DEV=/dev/${d##*/}; done
[ -c "$DEV" ] || { echo "no banger.agent port: $(ls /sys/class/virtio-ports 2>&1)"; exit 1; }
sh -c 'exec 3<>"$0"; while read -r l <&3; do echo "echo:$l" >&3; done' "$DEV" </dev/null >/dev/null 2>&1 &
echo "$DEV"`)
	if err != nil {
		t.Fatalf("starting the guest echo: %v %s", err, out)
	}
	t.Logf("guest port device: %s", strings.TrimSpace(out))

	// The guest opens the port asynchronously: retry until OK, as a client
	// waiting for its agent does.
	var first uint64
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, br = dialVsock(t, uds, "CONNECT 1024\n")
		line, err := readLine(c, br, 10*time.Second)
		if n, ok := strings.CutPrefix(line, "OK "); ok {
			first, err = strconv.ParseUint(strings.TrimSpace(n), 10, 32)
			if err != nil || first < 1<<30 {
				t.Fatalf("handshake %q", line)
			}
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("no OK within 20s (last: %q, %v)", line, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	echo := func(what string, c net.Conn, br *bufio.Reader, msg string) {
		t.Helper()
		if _, err := io.WriteString(c, msg+"\n"); err != nil {
			t.Fatalf("%s: write: %v", what, err)
		}
		if line, err := readLine(c, br, 20*time.Second); line != "echo:"+msg+"\n" {
			t.Fatalf("%s: got %q, %v; want %q", what, line, err, "echo:"+msg)
		}
	}
	echo("first connection", c, br, "hello over virtio-serial")
	echo("first connection, again", c, br, "second line")
	c.Close()

	// A new connection gets a fresh host port and works.
	c, br = dialVsock(t, uds, "CONNECT 1024\n")
	if line, err := readLine(c, br, 10*time.Second); line != fmt.Sprintf("OK %d\n", first+1) {
		t.Fatalf("second connection: handshake %q, %v; want OK %d", line, err, first+1)
	}
	echo("second connection", c, br, "again")
	c.Close()

	// Another guest port: nothing listens there, closed without OK.
	c, br = dialVsock(t, uds, "CONNECT 5000\n")
	expectClosed(t, "CONNECT 5000", c, br)

	// Two concurrent connections are served one after the other.
	c1, br1 := dialVsock(t, uds, "CONNECT 1024\n")
	if line, err := readLine(c1, br1, 10*time.Second); !strings.HasPrefix(line, "OK ") {
		t.Fatalf("concurrent 1: %q, %v", line, err)
	}
	c2, br2 := dialVsock(t, uds, "CONNECT 1024\n")
	if line, err := readLine(c2, br2, time.Second); line != "" || !isTimeout(err) {
		t.Fatalf("concurrent 2 while 1 is open: %q, %v; want no answer yet", line, err)
	}
	echo("concurrent 1", c1, br1, "one")
	c1.Close()
	if line, err := readLine(c2, br2, 10*time.Second); !strings.HasPrefix(line, "OK ") {
		t.Fatalf("concurrent 2 after 1 closed: %q, %v", line, err)
	}
	echo("concurrent 2", c2, br2, "two")
	c2.Close()
	if b, _ := os.ReadFile(vm.logPath); !strings.Contains(string(b), "vsock_id field is deprecated") {
		t.Errorf("the VMM log lacks the vsock_id deprecation warning")
	}
}

func dialVsock(t *testing.T, uds, request string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	return c, bufio.NewReader(c)
}
