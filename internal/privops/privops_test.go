package privops

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/errdefs"
)

func testPolicy(t *testing.T) (Policy, string) {
	t.Helper()
	root := t.TempDir()
	state := filepath.Join(root, "state")
	vms := filepath.Join(state, "vms")
	os.MkdirAll(filepath.Join(vms, "abc"), 0o700)
	os.MkdirAll(filepath.Join(state, "images", "tiny"), 0o700)
	os.WriteFile(filepath.Join(state, "images", "tiny", "rootfs.ext4"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(state, "vmlinux"), []byte("x"), 0o600)
	return Policy{Roots: []string{state}, VMsDir: vms}, root
}

func isBadRequest(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want an error mentioning %q", want)
	}
	if !errors.Is(err, errdefs.ErrBadRequest) {
		t.Fatalf("error %v is not bad_request", err)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not mention %q", err, want)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Fatalf("error is not one line: %q", err)
	}
}

func goodLaunch(p Policy, root string) LaunchReq {
	self, _ := os.Executable()
	d := filepath.Join(p.VMsDir, "abc")
	return LaunchReq{ID: "abc", Binary: self, APISock: filepath.Join(d, "api.sock"), PIDFile: filepath.Join(d, "vmm.pid"),
		SerialLog: filepath.Join(d, "serial.log"), Kernel: filepath.Join(root, "state", "vmlinux"), BootArgs: "console=ttyS0",
		Rootfs: filepath.Join(d, "rootfs.ext4"), Tap: "bgtapabc", MAC: "02:fc:ac:1e:00:02", VCPU: 1, MemMiB: 256}
}

func TestLaunchValidation(t *testing.T) {
	p, root := testPolicy(t)
	if err := p.ValidateLaunch(goodLaunch(p, root)); err != nil {
		t.Fatalf("good request refused: %v", err)
	}
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "k"), []byte("x"), 0o600)
	os.Symlink(outside, filepath.Join(p.VMsDir, "evil"))
	os.Symlink(filepath.Join(outside, "k"), filepath.Join(root, "state", "klink"))
	cases := []struct {
		name string
		mut  func(*LaunchReq)
		want string
	}{
		{"kernel outside banger's dirs", func(r *LaunchReq) { r.Kernel = filepath.Join(outside, "k") }, "kernel"},
		{"socket through a symlinked dir", func(r *LaunchReq) { r.APISock = filepath.Join(p.VMsDir, "evil", "api.sock") }, "symlink"},
		{"kernel is a symlink", func(r *LaunchReq) { r.Kernel = filepath.Join(root, "state", "klink") }, "symlink"},
		{"relative path", func(r *LaunchReq) { r.Rootfs = "vms/abc/rootfs.ext4" }, "rootfs"},
		{"dot-dot escape", func(r *LaunchReq) { r.PIDFile = filepath.Join(p.VMsDir, "abc") + "/../../../etc/x" }, "pidfile"},
		{"tap outside prefix", func(r *LaunchReq) { r.Tap = "eth0" }, "eth0"},
		{"vmm not a regular file", func(r *LaunchReq) { r.Binary = "/usr/bin" }, "vmm binary"},
		{"vmm missing", func(r *LaunchReq) { r.Binary = "/nonexistent/firecracker" }, "vmm binary"},
		{"bad id", func(r *LaunchReq) { r.ID = "a b" }, "vm id"},
		{"vcpu 0", func(r *LaunchReq) { r.VCPU = 0 }, "vcpu"},
		{"tiny memory", func(r *LaunchReq) { r.MemMiB = 1 }, "memory"},
		{"global mac", func(r *LaunchReq) { r.MAC = "00:11:22:33:44:55" }, "mac"},
		{"vsock socket outside the vms dir", func(r *LaunchReq) { r.VsockUDS = filepath.Join(outside, "v.sock") }, "vsock socket"},
		{"read-only drive outside the vms dir", func(r *LaunchReq) { r.ROdrives = []string{filepath.Join(outside, "k")} }, "read-only drive"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := goodLaunch(p, root)
			c.mut(&r)
			isBadRequest(t, p.ValidateLaunch(r), c.want)
		})
	}
}

func TestDisksValidation(t *testing.T) {
	p, root := testPolicy(t)
	d := filepath.Join(p.VMsDir, "abc")
	tools := filepath.Join(root, "state", "tools.ext4")
	os.WriteFile(tools, []byte("x"), 0o600)
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "seed.tar"), []byte("x"), 0o600)
	good := func() DisksReq {
		return DisksReq{VMDir: d, BaseRootfs: filepath.Join(root, "state", "images", "tiny", "rootfs.ext4"), Rootfs: filepath.Join(d, "rootfs.ext4"),
			WorkDisk: filepath.Join(d, "work.ext4"), WorkDiskBytes: 128 << 20, AuthorizedKey: "ssh-ed25519 AAAAC3Nz banger\n",
			ToolsSource: tools, ToolsDisk: filepath.Join(d, "tools.ext4")}
	}
	if err := p.ValidateDisks(good()); err != nil {
		t.Fatalf("good request refused: %v", err)
	}
	cases := []struct {
		name string
		mut  func(*DisksReq)
		want string
	}{
		{"work seed outside banger's dirs", func(r *DisksReq) { r.WorkSeed = filepath.Join(outside, "seed.tar") }, "work seed"},
		{"tools source outside banger's dirs", func(r *DisksReq) { r.ToolsSource = filepath.Join(outside, "seed.tar") }, "tools source"},
		{"tools disk outside the vm dir", func(r *DisksReq) { r.ToolsDisk = filepath.Join(p.VMsDir, "tools.ext4") }, "tools disk"},
		{"tools disk without a source", func(r *DisksReq) { r.ToolsSource = "" }, "go together"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := good()
			c.mut(&r)
			isBadRequest(t, p.ValidateDisks(r), c.want)
		})
	}
}

func TestInterfaceAndNetworkValidation(t *testing.T) {
	p, _ := testPolicy(t)
	if _, err := p.ValidateBridge(BridgeReq{Name: "banger0", Gateway: "172.30.0.1/24"}); err != nil {
		t.Fatal(err)
	}
	_, err := p.ValidateBridge(BridgeReq{Name: "docker0", Gateway: "172.30.0.1/24"})
	isBadRequest(t, err, "docker0")
	_, err = p.ValidateBridge(BridgeReq{Name: "banger0", Gateway: "8.8.8.1/24"})
	isBadRequest(t, err, "gateway")
	isBadRequest(t, p.ValidateTap(TapReq{Name: "eth0"}), "eth0")
	isBadRequest(t, p.ValidateTap(TapReq{Name: "bgtap1", Bridge: "br0"}), "br0")
	_, err = p.ValidateNAT(NATReq{GuestIP: "1.2.3.4", Tap: "bgtap1"})
	isBadRequest(t, err, "1.2.3.4")
	_, err = p.ValidateKill(KillReq{PIDFile: "/etc/passwd", APISock: "/etc/x"})
	isBadRequest(t, err, "pidfile")
	_, err = p.ValidateKill(KillReq{PIDFile: filepath.Join(p.VMsDir, "abc", "vmm.pid"), APISock: filepath.Join(p.VMsDir, "abc", "api.sock"), Signal: "HUP"})
	isBadRequest(t, err, "HUP")
	isBadRequest(t, p.ValidateVMDir(VMDirReq{VMDir: "/"}), "vm dir")
	isBadRequest(t, p.ValidateVMDir(VMDirReq{VMDir: p.VMsDir}), "vm dir")
}

func TestLocalRefusesBeforeActing(t *testing.T) {
	p, _ := testPolicy(t)
	l := &Local{Policy: p}
	victim := t.TempDir()
	os.WriteFile(filepath.Join(victim, "keep"), []byte("x"), 0o600)
	err := l.RemoveVMDir(context.Background(), VMDirReq{VMDir: victim})
	isBadRequest(t, err, "vm dir")
	if _, err := os.Stat(filepath.Join(victim, "keep")); err != nil {
		t.Fatal("refused request still deleted files")
	}
	os.Symlink(victim, filepath.Join(p.VMsDir, "link"))
	isBadRequest(t, l.RemoveVMDir(context.Background(), VMDirReq{VMDir: filepath.Join(p.VMsDir, "link")}), "symlink")
	if _, err := os.Stat(filepath.Join(victim, "keep")); err != nil {
		t.Fatal("a symlinked vm dir was followed")
	}
}
