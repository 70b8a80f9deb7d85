package guestbuild

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/digest"
)

// TestGuestScriptsParse checks the embedded shell scripts with `sh -n`
// (busybox sh when the host has it: that is the guest's shell).
func TestGuestScriptsParse(t *testing.T) {
	sh := []string{"sh"}
	if bb, err := exec.LookPath("busybox"); err == nil {
		sh = []string{bb, "sh"}
	}
	for _, s := range []string{"init", "rc.boot", "sshd", "ready", "console", "agent"} {
		b := mustScript(s)
		if !bytes.HasPrefix(b, []byte("#!")) {
			t.Errorf("%s has no #! line", s)
		}
		cmd := exec.Command(sh[0], append(sh[1:], "-n")...)
		cmd.Stdin = bytes.NewReader(b)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: sh -n: %v %s", s, err, out)
		}
	}
	it := string(mustScript("inittab"))
	for _, want := range []string{"::sysinit:/etc/banger/rc.boot", "::respawn:/etc/banger/sshd", "::once:/etc/banger/ready"} {
		if !strings.Contains(it, want) {
			t.Errorf("inittab lacks %q", want)
		}
	}
}

func TestResolveInAndIndexLibs(t *testing.T) {
	root := t.TempDir()
	lib := filepath.Join(root, "lib", "x86_64-linux-gnu")
	os.MkdirAll(lib, 0o755)
	os.MkdirAll(filepath.Join(root, "lib64"), 0o755)
	os.WriteFile(filepath.Join(lib, "libz.so.1.2.13"), []byte("z"), 0o644)
	os.Symlink("libz.so.1.2.13", filepath.Join(lib, "libz.so.1"))
	os.WriteFile(filepath.Join(lib, "ld-linux-x86-64.so.2"), []byte("ld"), 0o755)
	// absolute target: must resolve inside root, not on the host
	os.Symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", filepath.Join(root, "lib64", "ld-linux-x86-64.so.2"))
	os.Symlink("../../../etc/passwd", filepath.Join(lib, "libevil.so.1"))

	if p, err := resolveIn(root, "lib64/ld-linux-x86-64.so.2"); err != nil || p != filepath.Join(lib, "ld-linux-x86-64.so.2") {
		t.Errorf("ld.so -> %q, %v", p, err)
	}
	if _, err := resolveIn(root, "lib/x86_64-linux-gnu/libevil.so.1"); err == nil {
		t.Error("symlink escaping the package root was followed")
	}
	idx, err := indexLibs(map[string]string{"zlib1g": root})
	if err != nil {
		t.Fatal(err)
	}
	if idx["libz.so.1"] != filepath.Join(lib, "libz.so.1.2.13") {
		t.Errorf("libz.so.1 -> %q", idx["libz.so.1"])
	}
	if _, ok := idx["libevil.so.1"]; ok {
		t.Error("escaping library indexed")
	}
}

func TestMakePlanMemoAndKey(t *testing.T) {
	t.Setenv(KernelDebEnv, "")
	root := t.TempDir()
	memo := resolveMemo{
		Fingerprint: aptStateFingerprint(),
		KernelVer:   "6.1.0-99-cloud-amd64",
		Kernel:      debPkg{Name: "linux-image-6.1.0-99-cloud-amd64", Version: "6.1.999-1", Arch: "amd64", SHA256: "aa"},
	}
	for _, n := range userlandPackages {
		memo.Userland = append(memo.Userland, debPkg{Name: n, Version: "1", Arch: "amd64", SHA256: "bb"})
	}
	write := func() {
		b, _ := json.Marshal(memo)
		os.WriteFile(filepath.Join(root, "resolve.json"), b, 0o644)
	}
	write()
	pl, err := makePlan(context.Background(), root, "")
	if err != nil {
		t.Fatal(err)
	}
	if pl.KernelVersion != memo.KernelVer || !strings.HasPrefix(pl.Key, "6.1.0-99-cloud-amd64-") {
		t.Fatalf("plan from memo = %+v", pl)
	}
	again, _ := makePlan(context.Background(), root, "")
	if again.Key != pl.Key {
		t.Errorf("key not stable: %s vs %s", again.Key, pl.Key)
	}
	memo.Userland[1].Version = "2" // e.g. a dropbear security update
	write()
	if changed, _ := makePlan(context.Background(), root, ""); changed.Key == pl.Key {
		t.Error("key did not change with a package version")
	}
}

// TestMakePlanKernelDebEnv: BANGER_KERNEL_DEB replaces the archive kernel
// and its checksum is part of the key.
func TestMakePlanKernelDebEnv(t *testing.T) {
	dpkgDeb, err := findTool("dpkg-deb", "dpkg")
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	pkg := filepath.Join(dir, "pkg")
	os.MkdirAll(filepath.Join(pkg, "DEBIAN"), 0o755)
	os.MkdirAll(filepath.Join(pkg, "boot"), 0o755)
	os.WriteFile(filepath.Join(pkg, "DEBIAN", "control"), []byte("Package: linux-image-6.1.0-77-cloud-amd64\nVersion: 6.1.1-1\n"+
		"Architecture: amd64\nMaintainer: test <t@example.invalid>\nDescription: fake kernel\n"), 0o644)
	os.WriteFile(filepath.Join(pkg, "boot", "vmlinuz-6.1.0-77-cloud-amd64"), []byte("not really"), 0o644)
	deb := filepath.Join(dir, "k.deb")
	if out, err := exec.Command(dpkgDeb, "--build", "--root-owner-group", pkg, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build: %v %s", err, out)
	}
	root := t.TempDir()
	memo := resolveMemo{Fingerprint: aptStateFingerprint(), KernelVer: "6.1.0-99-cloud-amd64",
		Kernel: debPkg{Name: "linux-image-6.1.0-99-cloud-amd64", Version: "1", SHA256: "aa"}}
	for _, n := range userlandPackages {
		memo.Userland = append(memo.Userland, debPkg{Name: n, Version: "1", SHA256: "bb"})
	}
	b, _ := json.Marshal(memo)
	os.WriteFile(filepath.Join(root, "resolve.json"), b, 0o644)
	t.Setenv(KernelDebEnv, deb)
	pl, err := makePlan(context.Background(), root, "")
	if err != nil {
		t.Fatal(err)
	}
	sum, _ := digest.FileSHA256(deb)
	if pl.KernelVersion != "6.1.0-77-cloud-amd64" || pl.Kernel.File != deb || pl.Kernel.SHA256 != sum ||
		!strings.HasPrefix(pl.Key, "6.1.0-77-cloud-amd64-") {
		t.Errorf("plan = %+v", pl)
	}
	t.Setenv(KernelDebEnv, filepath.Join(dir, "missing.deb"))
	if _, err := makePlan(context.Background(), root, ""); err == nil || !strings.Contains(err.Error(), KernelDebEnv) {
		t.Errorf("missing deb: %v", err)
	}
}

// publishedForTest returns the newest build in the test cache, or skips.
func publishedForTest(t *testing.T) Artifacts {
	a, err := newestPublished(filepath.Join(testCacheDir(), "guest"))
	if err != nil {
		t.Skipf("no published guest in %s (run TestBootGuest first): %v", testCacheDir(), err)
	}
	return a
}

// TestPublishedInitrd inspects the real initramfs.
func TestPublishedInitrd(t *testing.T) {
	a := publishedForTest(t)
	f, err := os.Open(a.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	ents, err := readNewc(raw)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]cpioEntry{}
	for _, e := range ents {
		files[e.Name] = e
	}
	for _, n := range []string{"init", "bin/busybox", "dev/console", "lib/modules/order", "newroot"} {
		if _, ok := files[n]; !ok {
			t.Errorf("initrd lacks %s", n)
		}
	}
	if e := files["init"]; e.Mode&0o111 == 0 || !bytes.Equal(e.Data, mustScript("init")) {
		t.Error("init is not the embedded script or not executable")
	}
	order := strings.Fields(string(files["lib/modules/order"].Data))
	pos := map[string]int{}
	for i, m := range order {
		pos[m] = i
		if e, ok := files["lib/modules/"+m]; !ok || !bytes.HasPrefix(e.Data, []byte("\x7fELF")) {
			t.Errorf("module %s missing or not ELF", m)
		}
	}
	for _, m := range []string{"virtio_mmio.ko", "virtio_pci.ko", "virtio_blk.ko", "virtio_net.ko", "virtio-rng.ko", "virtio_console.ko"} {
		if _, ok := pos[m]; !ok {
			t.Errorf("order lacks %s", m)
		}
	}
	if pos["virtio.ko"] > pos["virtio_blk.ko"] || pos["virtio_ring.ko"] > pos["virtio.ko"] {
		t.Errorf("dependencies after their users: %v", order)
	}
	t.Logf("initrd: %d entries, modules %v", len(ents), order)
}

// TestPublishedRootfs inspects the real rootfs image with debugfs (no mount).
func TestPublishedRootfs(t *testing.T) {
	a := publishedForTest(t)
	debugfs, err := findTool("debugfs", "e2fsprogs")
	if err != nil {
		t.Skip(err)
	}
	for path, want := range map[string]string{
		"/bin/busybox":                           "Type: regular",
		"/usr/sbin/dropbear":                     "Type: regular",
		"/usr/bin/dropbearkey":                   "Type: regular",
		"/lib/x86_64-linux-gnu/libc.so.6":        "Type: regular",
		"/lib/x86_64-linux-gnu/libtomcrypt.so.1": "Type: regular",
		"/lib64/ld-linux-x86-64.so.2":            "Type: symlink",
		"/sbin/init":                             "Type: symlink",
		"/bin/sh":                                "Type: symlink",
		"/sbin/ip":                               "Type: symlink",
		"/etc/shadow":                            "Mode:  0600",
		"/etc/inittab":                           "Type: regular",
		"/etc/banger/rc.boot":                    "Mode:  0755",
		"/root":                                  "Mode:  0700",
		"/tmp":                                   "Mode:  01777",
		"/var/tmp":                               "Mode:  01777",
		"/etc/resolv.conf":                       "Type: symlink",
		"/lib/modules/" + a.KernelVersion + "/modules.dep": "Type: regular",
	} {
		out, err := exec.Command(debugfs, "-R", "stat "+path, a.Rootfs).CombinedOutput()
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("%s: want %q in debugfs stat:\n%s", path, want, firstLines(string(out), 4))
		}
		if !strings.Contains(string(out), "User:     0   Group:     0") {
			t.Errorf("%s not owned by 0:0:\n%s", path, firstLines(string(out), 4))
		}
	}
	out, _ := exec.Command(debugfs, "-R", "cat /etc/shadow", a.Rootfs).CombinedOutput()
	if !strings.Contains(string(out), "root:*:") {
		t.Errorf("shadow: %s", out)
	}
}

func firstLines(s string, n int) string {
	l := strings.SplitN(s, "\n", n+1)
	if len(l) > n {
		l = l[:n]
	}
	return strings.Join(l, "\n")
}

func TestFindToolMessage(t *testing.T) {
	_, err := findTool("no-such-tool-for-banger", "some-package")
	if err == nil || err.Error() != "guestbuild: no-such-tool-for-banger not found: install it with `apt-get install some-package`" {
		t.Errorf("err = %v", err)
	}
	if p, err := findTool("sh", "dash"); err != nil || !filepath.IsAbs(p) {
		t.Errorf("sh: %q %v", p, err)
	}
}
