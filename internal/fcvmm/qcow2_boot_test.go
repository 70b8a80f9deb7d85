package fcvmm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	firecracker "github.com/firecracker-microvm/firecracker-go-sdk"
	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img is not installed")
	}
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %s: %v %s", strings.Join(args, " "), err, out)
	}
}

// qemuArgv is the running QEMU's command line.
func (vm *bootedVM) qemuArgv(t *testing.T) string {
	t.Helper()
	pid := vm.qemuPID()
	b, err := os.ReadFile(procFile(pid, "cmdline"))
	if pid == 0 || err != nil {
		t.Fatalf("no QEMU command line (pid %d): %v", pid, err)
	}
	return string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
}

// lockedBy reports whether /proc/locks lists a lock on path's inode.
func lockedBy(t *testing.T, path string) bool {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile("/proc/locks")
	id := fmt.Sprintf(" %02x:%02x:%d ", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	return bytes.Contains(b, []byte(id))
}

// TestBootQcow2Drives boots the guest from a qcow2 overlay over a raw root
// file system, marked qcow2 with user.banger.format as banger's root helper
// marks it: the guest reads and writes its root, the writes land in the
// overlay (the raw backing file is unchanged), and QEMU holds no lock on
// either. A raw disk that holds a qcow2 image (naming a host file as its
// backing file) but carries no attribute is served raw: the guest sees the
// qcow2 header bytes and the file's own size, not the host file.
func TestBootQcow2Drives(t *testing.T) {
	env := bootPrereqs(t)
	ns := newNetns(t)
	var base, overlay, disguised, baseSum string
	var overlaySize, disguisedSize int64
	vm := bootVM(t, env, ns, "qcow2", func(c *firecracker.Config) {
		dir := filepath.Dir(c.SocketPath)
		base = filepath.Join(dir, "root.ext4") // bootVM's raw copy
		overlay = filepath.Join(dir, "root.qcow2")
		qemuImg(t, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, overlay)
		setFormat(t, overlay, "qcow2")
		secret := writeFile(t, filepath.Join(dir, "host-secret"), bytes.Repeat([]byte("HOST-SECRET-BYTES\n"), 1000))
		disguised = filepath.Join(dir, "disguised.img")
		qemuImg(t, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", secret, disguised, "64M")
		baseSum = fileSum(t, base)
		st, _ := os.Stat(overlay)
		overlaySize = st.Size()
		st, _ = os.Stat(disguised)
		disguisedSize = st.Size()
		c.Drives = firecracker.NewDrivesBuilder(overlay).
			AddDrive(filepath.Join(dir, "work.ext4"), false).
			AddDrive(disguised, true).Build()
	})
	vm.waitReady(t)

	argv := vm.qemuArgv(t)
	for _, want := range []string{
		"id=drive0,format=qcow2,cache=unsafe,readonly=off,file.locking=off,backing.driver=raw,backing.file.locking=off ",
		"id=drive1,format=raw,cache=unsafe,readonly=off,file.locking=off ",
		"id=drive2,format=raw,cache=unsafe,readonly=on,file.locking=off ",
	} {
		if !strings.Contains(argv, want) {
			t.Errorf("QEMU's argv lacks %q:\n%s", want, argv)
		}
	}
	if strings.Contains(argv, base) || strings.Contains(argv, overlay) {
		t.Errorf("a host path reached QEMU's argv: %s", argv)
	}

	out, err := vm.ssh(t, `awk '$2=="/"{print $1, substr($4,1,2)}' /proc/mounts
echo written-through-qcow2 >/qcow2-marker && dd if=/dev/urandom of=/qcow2-big bs=1M count=8 2>/dev/null && sync && cat /qcow2-marker
dd if=/dev/vdc bs=4 count=1 2>/dev/null | od -An -tx1
cat /sys/block/vdc/size
grep -c HOST-SECRET /dev/vdc || true`)
	if err != nil {
		t.Fatalf("ssh: %v %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 {
		t.Fatalf("guest output %q", out)
	}
	if lines[0] != "/dev/vda rw" || lines[1] != "written-through-qcow2" {
		t.Errorf("root on the qcow2 overlay: %q, %q", lines[0], lines[1])
	}
	if got := strings.Join(strings.Fields(lines[2]), " "); got != "51 46 49 fb" {
		t.Errorf("the disguised raw disk's first bytes in the guest: %q, want the qcow2 magic 51 46 49 fb", got)
	}
	// QEMU rounds a raw file's size up to whole sectors.
	if sectors, _ := strconv.ParseInt(lines[3], 10, 64); sectors != (disguisedSize+511)/512 {
		t.Errorf("the disguised raw disk is %s sectors in the guest, want the file's %d bytes (not the qcow2 virtual size, 64 MiB)", lines[3], disguisedSize)
	}
	if lines[4] != "0" {
		t.Errorf("the guest read the host file named in a raw disk's qcow2 header (%s matches)", lines[4])
	}

	if got := fileSum(t, base); got != baseSum {
		t.Errorf("the raw backing file changed under guest writes")
	}
	if st, _ := os.Stat(overlay); st.Size() < overlaySize+8<<20 {
		t.Errorf("the overlay is %d bytes after the guest wrote 8 MiB (was %d)", st.Size(), overlaySize)
	}
	for _, p := range []string{base, overlay, disguised} {
		if lockedBy(t, p) {
			t.Errorf("QEMU holds a lock on %s; banger-vmm turns locking off on every file", p)
		}
	}
}

// startInDir runs banger-vmm with dir as its working directory and a
// relative API socket, as banger launches it, and starts cfg through the
// SDK (validation off: the SDK would resolve relative paths against the
// test's working directory).
func startInDir(t *testing.T, env *bootEnv, ns *netns, dir, name string, cfg firecracker.Config, opts ...firecracker.Opt) *bootedVM {
	t.Helper()
	vm, id := newVMMProcess(t, env, ns, dir, name)
	vm.cmd.Args = []string{env.bin, "--api-sock", "fc.sock", "--id", id, "--no-seccomp"}
	vm.cmd.Dir = dir
	cfg.SocketPath, cfg.VMID, cfg.LogPath, cfg.LogLevel = vm.sock, id, vm.logPath, "Info"
	cfg.ForwardSignals = []os.Signal{}
	cfg.DisableValidation = true
	lg := logrus.New()
	lg.SetOutput(vm.sdkLog)
	ctx := context.Background()
	var err error
	vm.m, err = firecracker.NewMachine(ctx, cfg, append([]firecracker.Opt{firecracker.WithProcessRunner(vm.cmd), firecracker.WithLogger(logrus.NewEntry(lg))}, opts...)...)
	if err != nil {
		t.Fatalf("NewMachine: %v", err)
	}
	vm.killAtEnd(t, name)
	vm.started = time.Now()
	if err := ns.do(func() error { return vm.m.Start(ctx) }); err != nil {
		t.Fatalf("%s: Start: %v\nSDK log:\n%s\nserial:\n%s", name, err, vm.sdkLog, vm.log())
	}
	return vm
}

// agentEcho connects to the vsock at uds (retrying until the guest's port is
// open) and checks one echo line.
func agentEcho(t *testing.T, uds, msg string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, br := dialVsock(t, uds, "CONNECT 1024\n")
		line, err := readLine(c, br, 10*time.Second)
		if strings.HasPrefix(line, "OK ") {
			io.WriteString(c, msg+"\n")
			if got, err := readLine(c, br, 20*time.Second); got != "echo:"+msg+"\n" {
				t.Fatalf("vsock echo through %s: %q, %v", uds, got, err)
			}
			c.Close()
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("no OK from %s within 20s (last: %q, %v)", uds, line, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestBootSnapshotRelativePaths: banger runs each VMM in its VM's directory
// and names the drives and the vsock socket relative to it, as Firecracker
// recommends for snapshots. A VMM boots with relative drives, vsock and
// snapshot paths; the snapshot records them as given; a second VMM loads it
// in another directory holding other files of those names — the way a clone
// gets its own disks — and uses that directory's files: its root is a qcow2
// overlay (user.banger.format) over the first VM's root, which stays
// unchanged; its marker disk is its own; its vsock socket is its own.
func TestBootSnapshotRelativePaths(t *testing.T) {
	env := bootPrereqs(t)
	ns := newNetns(t)
	dirA, dirB := t.TempDir(), t.TempDir()
	at := func(dir, name string) string { return filepath.Join(dir, name) }

	// The first VM's directory: root, work disk, a raw marker disk.
	if out, err := exec.Command("cp", "--sparse=always", env.art.Rootfs, at(dirA, "rootfs.ext4")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	home := at(dirA, "home")
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	os.WriteFile(filepath.Join(home, ".ssh", "authorized_keys"), env.authKeys, 0o600)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", home, at(dirA, "work.ext4"), "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	marker := func(dir, text string) {
		b := make([]byte, 1<<20)
		copy(b, text)
		writeFile(t, at(dir, "marker.img"), b)
	}
	marker(dirA, "DISK-A")

	cfg := firecracker.Config{
		KernelImagePath: env.art.Vmlinux,
		InitrdPath:      env.art.Initrd,
		KernelArgs:      "console=ttyS0 reboot=k panic=1 quiet banger.ip=172.31.99.2/24 banger.gw=172.31.99.1 banger.hostname=rel",
		Drives:          firecracker.NewDrivesBuilder("rootfs.ext4").AddDrive("work.ext4", false).AddDrive("marker.img", false).Build(),
		NetworkInterfaces: []firecracker.NetworkInterface{{
			StaticConfiguration: &firecracker.StaticNetworkConfiguration{HostDevName: "tap0", MacAddress: "06:00:ac:1f:63:02"},
		}},
		VsockDevices: []firecracker.VsockDevice{{ID: "agent", Path: "agent.sock", CID: 3}},
		MachineCfg:   models.MachineConfiguration{VcpuCount: firecracker.Int64(1), MemSizeMib: firecracker.Int64(256)},
	}
	a := startInDir(t, env, ns, dirA, "rel-a", cfg)
	a.waitReady(t)
	out, err := a.ssh(t, `DEV=; for d in /sys/class/virtio-ports/*; do [ "$(cat $d/name)" = banger.agent ] && DEV=/dev/${d##*/}; done
[ -c "$DEV" ] || { echo "no banger.agent port"; exit 1; }
sh -c 'exec 3<>"$0"; while read -r l <&3; do echo "echo:$l" >&3; done' "$DEV" </dev/null >/dev/null 2>&1 &
echo only-in-memory >/dev/shm/marker
dd if=/dev/vdc bs=6 count=1 2>/dev/null`)
	if err != nil || out != "DISK-A" {
		t.Fatalf("first VM: %q %v", out, err)
	}
	agentEcho(t, at(dirA, "agent.sock"), "before the snapshot")

	ctx := context.Background()
	if err := a.m.PauseVM(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.m.CreateSnapshot(ctx, "vm.mem", "vm.snap"); err != nil {
		t.Fatalf("CreateSnapshot with relative paths: %v", err)
	}
	var rec snapshotRecord
	if b, err := os.ReadFile(at(dirA, "vm.snap")); err != nil || json.Unmarshal(b, &rec) != nil {
		t.Fatalf("the snapshot file is not in the VMM's directory: %v", err)
	}
	var paths []string
	for _, d := range rec.Drives {
		paths = append(paths, d.Path)
	}
	if strings.Join(paths, ",") != "rootfs.ext4,work.ext4,marker.img" || rec.Vsock == nil || rec.Vsock.UdsPath != "agent.sock" {
		t.Fatalf("the snapshot recorded drives %v and vsock %+v; want the relative paths as given", paths, rec.Vsock)
	}
	q := a.qemuPID()
	a.cmd.Process.Kill()
	a.m.Wait(ctx)
	waitGone(t, q, "the first VM's QEMU")
	frozen := fileSum(t, at(dirA, "rootfs.ext4"))

	// The clone's directory: same names, its own files.
	qemuImg(t, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", at(dirA, "rootfs.ext4"), at(dirB, "rootfs.ext4"))
	setFormat(t, at(dirB, "rootfs.ext4"), "qcow2")
	st, _ := os.Stat(at(dirB, "rootfs.ext4"))
	overlaySize := st.Size()
	for _, f := range []string{"work.ext4", "vm.snap", "vm.mem"} {
		if out, err := exec.Command("cp", "--sparse=always", at(dirA, f), at(dirB, f)).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
	}
	marker(dirB, "DISK-B")

	b := startInDir(t, env, ns, dirB, "rel-b", firecracker.Config{},
		firecracker.WithSnapshot("vm.mem", "vm.snap", func(c *firecracker.SnapshotConfig) { c.ResumeVM = true }))
	if fi, err := os.Lstat(at(dirB, "agent.sock")); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("the clone's vsock socket is not in its directory: %v", err)
	}
	agentEcho(t, at(dirB, "agent.sock"), "after the load")
	out, err = b.ssh(t, `cat /dev/shm/marker
echo 3 >/proc/sys/vm/drop_caches; dd if=/dev/vdc bs=6 count=1 2>/dev/null; echo
printf written-in-B | dd of=/dev/vdc bs=512 seek=8 conv=notrunc,fsync 2>/dev/null
echo restored >/restored-marker && sync && cat /restored-marker`)
	if err != nil || out != "only-in-memory\nDISK-B\nrestored\n" {
		t.Fatalf("the clone: %q %v; want its memory, its own marker disk and a writable root", out, err)
	}
	if argv := b.qemuArgv(t); !strings.Contains(argv, "id=drive0,format=qcow2,") || !strings.Contains(argv, "id=drive2,format=raw,") {
		t.Errorf("the clone's QEMU: %s", argv)
	}
	for dir, want := range map[string]string{dirA: "", dirB: "written-in-B"} {
		f, _ := os.ReadFile(at(dir, "marker.img"))
		if got := string(bytes.TrimRight(f[4096:4096+12], "\x00")); got != want {
			t.Errorf("%s/marker.img at 4096: %q, want %q", dir, got, want)
		}
	}
	if fileSum(t, at(dirA, "rootfs.ext4")) != frozen {
		t.Errorf("the first VM's root changed under the clone")
	}
	if st, _ := os.Stat(at(dirB, "rootfs.ext4")); st.Size() <= overlaySize {
		t.Errorf("the clone's overlay did not grow (%d bytes)", st.Size())
	}
}
