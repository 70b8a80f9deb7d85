package privops

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	bdisk "github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/vmdir"
	"golang.org/x/sys/unix"
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

func goodLaunch(root string) LaunchReq {
	return LaunchReq{ID: "abc", Kernel: filepath.Join(root, "state", "vmlinux"), BootArgs: "console=ttyS0",
		Tap: "bgtapabc", MAC: "02:fc:ac:1e:00:02", VCPU: 1, MemMiB: 256}
}

func TestLaunchValidation(t *testing.T) {
	p, root := testPolicy(t)
	if err := p.ValidateLaunch(goodLaunch(root)); err != nil {
		t.Fatalf("good request refused: %v", err)
	}
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "k"), []byte("x"), 0o600)
	os.Symlink(filepath.Join(outside, "k"), filepath.Join(root, "state", "klink"))
	cases := []struct {
		name string
		mut  func(*LaunchReq)
		want string
	}{
		{"kernel outside banger's dirs", func(r *LaunchReq) { r.Kernel = filepath.Join(outside, "k") }, "kernel"},
		{"kernel is a symlink", func(r *LaunchReq) { r.Kernel = filepath.Join(root, "state", "klink") }, "symlink"},
		{"initrd relative", func(r *LaunchReq) { r.Initrd = "state/vmlinux" }, "initrd"},
		{"tap outside prefix", func(r *LaunchReq) { r.Tap = "eth0" }, "eth0"},
		{"bad id", func(r *LaunchReq) { r.ID = "a b" }, "vm id"},
		{"id escapes", func(r *LaunchReq) { r.ID = "../x" }, "vm id"},
		{"vcpu 0", func(r *LaunchReq) { r.VCPU = 0 }, "vcpu"},
		{"tiny memory", func(r *LaunchReq) { r.MemMiB = 1 }, "memory"},
		{"global mac", func(r *LaunchReq) { r.MAC = "00:11:22:33:44:55" }, "mac"},
		{"boot args on two lines", func(r *LaunchReq) { r.BootArgs = "a\nb" }, "boot args"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := goodLaunch(root)
			c.mut(&r)
			isBadRequest(t, p.ValidateLaunch(r), c.want)
		})
	}
}

func TestDisksValidation(t *testing.T) {
	p, root := testPolicy(t)
	tools := filepath.Join(root, "state", "tools.ext4")
	os.WriteFile(tools, []byte("x"), 0o600)
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "seed.tar"), []byte("x"), 0o600)
	good := func() DisksReq {
		return DisksReq{ID: "abc", BaseRootfs: filepath.Join(root, "state", "images", "tiny", "rootfs.ext4"),
			WorkDiskBytes: 128 << 20, AuthorizedKey: "ssh-ed25519 AAAAC3Nz banger\n", ToolsSource: tools}
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
		{"id with a slash", func(r *DisksReq) { r.ID = "abc/../../etc" }, "vm id"},
		{"two key lines", func(r *DisksReq) { r.AuthorizedKey = "ssh-ed25519 AAAA a\nssh-ed25519 BBBB b\n" }, "authorized key"},
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
	_, err = p.ValidateKill(KillReq{ID: "../../etc"})
	isBadRequest(t, err, "vm id")
	_, err = p.ValidateKill(KillReq{ID: "abc", Signal: "HUP"})
	isBadRequest(t, err, "HUP")
	isBadRequest(t, p.ValidateVM(VMReq{ID: "/"}), "vm id")
	isBadRequest(t, p.ValidateVM(VMReq{ID: ""}), "vm id")
}

func TestLocalRefusesBeforeActing(t *testing.T) {
	p, _ := testPolicy(t)
	l := &Local{Policy: p}
	victim := t.TempDir()
	os.WriteFile(filepath.Join(victim, "keep"), []byte("x"), 0o600)
	rel, _ := filepath.Rel(p.VMsDir, victim)
	err := l.RemoveVMDir(context.Background(), VMReq{ID: rel})
	isBadRequest(t, err, "vm id")
	if _, err := os.Stat(filepath.Join(victim, "keep")); err != nil {
		t.Fatal("refused request still deleted files")
	}
	// A symlink in the VM tree is removed as a link, never followed.
	os.Symlink(victim, filepath.Join(p.VMsDir, "link"))
	if err := l.RemoveVMDir(context.Background(), VMReq{ID: "link"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(victim, "keep")); err != nil {
		t.Fatal("a symlinked vm dir was followed")
	}
}

// TestLaunchRefusesAVMMOthersCanChange: the helper's own VMM choice is
// checked before each launch: a binary in a directory another uid can
// write is refused ([P7] item 1).
func TestLaunchRefusesAVMMOthersCanChange(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	p, root := testPolicy(t)
	dir := filepath.Join(root, "owner-bin")
	os.MkdirAll(dir, 0o755)
	os.Chown(dir, 4246, 4246)
	bin := filepath.Join(dir, "banger-vmm")
	os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755)
	p.VMMBinary = bin
	_, err := (&Local{Policy: p}).LaunchVMM(context.Background(), goodLaunch(root))
	if err == nil || !strings.Contains(err.Error(), "owned by uid 4246") {
		t.Fatalf("a VMM in an owner-owned dir was accepted: %v", err)
	}
	os.Chown(dir, 0, 0)
	os.Chmod(dir, 0o777)
	_, err = (&Local{Policy: p}).LaunchVMM(context.Background(), goodLaunch(root))
	if err == nil || !strings.Contains(err.Error(), "writable by group or others") {
		t.Fatalf("a VMM in a world-writable dir was accepted: %v", err)
	}
}

// TestReleaseRootfs: a stopped VM's root disk becomes the owner's file
// (mode 0600), through the VM directory's handle: a symlink planted as the
// root disk is never followed, and a bad id is refused before anything.
func TestReleaseRootfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown to the owner)")
	}
	p, root := testPolicy(t)
	p.OwnerUID, p.OwnerGID = 4242, 4243
	l := &Local{Policy: p}
	ctx := context.Background()
	disk := filepath.Join(p.VMsDir, "abc", vmdir.RootfsName)
	if err := os.WriteFile(disk, []byte("ext4"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := l.ReleaseRootfs(ctx, VMReq{ID: "abc"}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(disk)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != 4242 || st.Gid != 4243 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("root disk is %d:%d %v, want 4242:4243 0600", st.Uid, st.Gid, fi.Mode().Perm())
	}

	// A link where the disk should be: refused, and its target untouched.
	secret := filepath.Join(root, "secret")
	os.WriteFile(secret, []byte("root's"), 0o600)
	os.MkdirAll(filepath.Join(p.VMsDir, "lnk"), 0o700)
	os.Symlink(secret, filepath.Join(p.VMsDir, "lnk", vmdir.RootfsName))
	if err := l.ReleaseRootfs(ctx, VMReq{ID: "lnk"}); err == nil {
		t.Fatal("a symlinked root disk was released")
	}
	if fi, _ := os.Stat(secret); fi.Sys().(*syscall.Stat_t).Uid != 0 || fi.Mode().Perm() != 0o600 {
		t.Fatal("the link's target was changed")
	}
	isBadRequest(t, l.ReleaseRootfs(ctx, VMReq{ID: "../state"}), "vm id")

	// A fork's root disk is an overlay of root's frozen disk: not an image.
	os.MkdirAll(filepath.Join(p.VMsDir, "ov"), 0o700)
	ov := filepath.Join(p.VMsDir, "ov", vmdir.RootfsName)
	os.WriteFile(ov, []byte("QFI\xfb"), 0o600)
	if err := unix.Setxattr(ov, bdisk.FormatXattr, []byte(bdisk.FormatQcow2), 0); err != nil {
		t.Skipf("no user xattrs: %v", err)
	}
	isBadRequest(t, l.ReleaseRootfs(ctx, VMReq{ID: "ov"}), "qcow2 overlay")
	if fi, _ := os.Stat(ov); fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatal("the overlay was handed to the owner")
	}
}
