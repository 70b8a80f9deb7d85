package guestbuild

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDebianKey(t *testing.T) {
	t.Setenv(DebianMirrorEnv, "")
	a, b := debianKey("6.1.0-56-cloud-amd64-aaaaaaaaaaaa"), debianKey("6.1.0-56-cloud-amd64-aaaaaaaaaaaa")
	if a != b || !strings.HasPrefix(a, "bookworm-") || len(a) != len("bookworm-")+12 {
		t.Fatalf("keys %q %q", a, b)
	}
	if c := debianKey("6.1.0-57-cloud-amd64-bbbbbbbbbbbb"); c == a {
		t.Fatal("the key ignores the kernel build")
	}
	t.Setenv(DebianMirrorEnv, "http://mirror.example/debian")
	if c := debianKey("6.1.0-56-cloud-amd64-aaaaaaaaaaaa"); c == a {
		t.Fatal("the key ignores the mirror")
	}
	if s := debianSourcesList(); len(s) != 1 || s[0] != "deb http://mirror.example/debian bookworm main" {
		t.Fatalf("sources %q", s)
	}
}

func TestDpkgInstalled(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "var/lib/dpkg"), 0o755)
	status := "Package: git\nStatus: install ok installed\nVersion: 1:2.39.5-0+deb12u2\n\n" +
		"Package: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n\n" +
		"Package: bash\nStatus: install ok installed\nDescription: x\n continued\nVersion: 5.2.15-2+b7\n"
	os.WriteFile(filepath.Join(dir, "var/lib/dpkg/status"), []byte(status), 0o644)
	got, err := dpkgInstalled(dir)
	if err != nil || strings.Join(got, " ") != "bash=5.2.15-2+b7 git=1:2.39.5-0+deb12u2" {
		t.Fatalf("%v %v", got, err)
	}
}

func TestMountsUnderAndRemoveTree(t *testing.T) {
	if unescapeMountinfo(`/a\040b/c`) != "/a b/c" {
		t.Fatal(unescapeMountinfo(`/a\040b/c`))
	}
	if len(mountsUnder("/proc")) == 0 {
		t.Fatal("no mount found at /proc")
	}
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "t", "proc"), 0o755)
	if os.Geteuid() == 0 {
		if out, err := exec.Command("mount", "-t", "tmpfs", "tmpfs", filepath.Join(dir, "t", "proc")).CombinedOutput(); err != nil {
			t.Logf("mount: %v %s", err, out)
		} else {
			os.WriteFile(filepath.Join(dir, "t", "proc", "x"), []byte("x"), 0o644)
			if len(mountsUnder(filepath.Join(dir, "t"))) != 1 {
				t.Fatal("tmpfs mount not seen")
			}
		}
	}
	if err := removeTree(filepath.Join(dir, "t")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "t")); !os.IsNotExist(err) {
		t.Fatalf("tree left: %v", err)
	}
}

// TestEnsureDebian builds (or reuses) the minimal Debian image in the cache
// the e2e tests use, then checks the published build without mounting it.
func TestEnsureDebian(t *testing.T) { testEnsureRecipe(t, minimalRecipe, EnsureDebian) }

// TestEnsureDevbox does the same for the dev box, and checks what it adds.
func TestEnsureDevbox(t *testing.T) { testEnsureRecipe(t, devRecipe, EnsureDevbox) }

func testEnsureRecipe(t *testing.T, rc debianRecipe, ensure Builtin) {
	if testing.Short() {
		t.Skip("builds a Debian root filesystem; skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (mmdebstrap --mode=root)")
	}
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		t.Skip("mmdebstrap not installed (apt-get install mmdebstrap)")
	}
	debugfs, err := findTool("debugfs", "e2fsprogs")
	if err != nil {
		t.Skip(err)
	}
	cache := filepath.Join(testCacheDir(), "xdg", "banger")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	var prog bytes.Buffer
	t0 := time.Now()
	a, err := ensure(ctx, Options{CacheDir: cache, Progress: &prog})
	if err != nil {
		t.Fatalf("%s: %v\n%s", rc.name, err, prog.String())
	}
	t.Logf("%s %s in %v\n%s", rc.name, a.Key, time.Since(t0), prog.String())
	t1 := time.Now()
	b, err := ensure(ctx, Options{CacheDir: cache})
	if err != nil || b != a {
		t.Fatalf("second %s: %v %+v", rc.name, err, b)
	}
	t.Logf("cached %s in %v", rc.name, time.Since(t1))
	if !IsKeyOf(rc.name, a.Key) {
		t.Fatalf("IsKeyOf(%s, %s) is false", rc.name, a.Key)
	}
	k, err := Ensure(ctx, Options{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	if a.Vmlinux != k.Vmlinux || a.Initrd != k.Initrd || a.Vmlinuz != k.Vmlinuz || a.KernelVersion != k.KernelVersion {
		t.Fatalf("kernel files differ from Ensure's: %+v vs %+v", a, k)
	}
	if filepath.Dir(a.Rootfs) != a.Dir || filepath.Base(filepath.Dir(a.Dir)) != rc.dir || !published(a.Dir) {
		t.Fatalf("layout: %+v", a)
	}
	var m debianManifest
	mb, _ := os.ReadFile(a.Manifest)
	if err := json.Unmarshal(mb, &m); err != nil || m.Key != a.Key || m.KernelKey != k.Key {
		t.Fatalf("manifest: %v %s", err, mb)
	}
	want := map[string]bool{"openssh-server": false, "git": false, "systemd-sysv": false, "curl": false}
	for _, p := range m.Packages {
		if _, ok := want[strings.SplitN(p, "=", 2)[0]]; ok {
			want[strings.SplitN(p, "=", 2)[0]] = true
		}
	}
	for n, ok := range want {
		if !ok {
			t.Errorf("package %s not installed", n)
		}
	}
	cat := func(p string) string {
		out, err := exec.Command(debugfs, "-R", "cat "+p, a.Rootfs).Output()
		if err != nil {
			t.Fatalf("debugfs cat %s: %v", p, err)
		}
		return string(out)
	}
	ls := func(p string) string {
		out, err := exec.Command(debugfs, "-R", "ls -l "+p, a.Rootfs).Output()
		if err != nil {
			t.Fatalf("debugfs ls %s: %v", p, err)
		}
		return string(out)
	}
	if os := cat("/usr/lib/os-release"); !strings.Contains(os, "VERSION_CODENAME=bookworm") {
		t.Errorf("os-release: %s", os)
	}
	if l := ls("/etc/ssh"); strings.Contains(l, "ssh_host_") {
		t.Errorf("the image carries ssh host keys:\n%s", l)
	}
	if c := cat("/etc/ssh/sshd_config.d/banger.conf"); !strings.Contains(c, "PermitRootLogin prohibit-password") {
		t.Errorf("sshd config: %s", c)
	}
	if l := ls("/etc/systemd/system"); !strings.Contains(l, "banger-boot.service") || !strings.Contains(l, "systemd-networkd-wait-online.service") {
		t.Errorf("units:\n%s", l)
	}
	if c := cat("/lib/modules/" + k.KernelVersion + "/modules.dep"); !strings.Contains(c, "virtio_net") {
		t.Errorf("modules.dep: %s", c)
	}
	if c := cat("/etc/machine-id"); c != "" {
		t.Errorf("machine-id %q", c)
	}
	t.Logf("%s: %d packages, rootfs %d MiB (%d MiB allocated), built in %.0fs", rc.name, len(m.Packages), m.RootfsBytes>>20, m.RootfsAllocated>>20, m.BuildSeconds)
	if rc.name != DevImage {
		return
	}
	for _, n := range []string{"build-essential", "golang-go", "nodejs", "npm", "python3-pytest", "docker.io", "containerd", "jq"} {
		found := false
		for _, p := range m.Packages {
			found = found || strings.HasPrefix(p, n+"=")
		}
		if !found {
			t.Errorf("package %s not installed", n)
		}
	}
	if l := ls("/usr/local/bin"); !strings.Contains(l, "mise") {
		t.Errorf("no mise in /usr/local/bin:\n%s", l)
	}
	if c := cat("/lib/modules/" + k.KernelVersion + "/modules.dep"); !strings.Contains(c, "overlay.ko") || !strings.Contains(c, "br_netfilter.ko") || !strings.Contains(c, "veth.ko") {
		t.Errorf("modules.dep lacks overlay, br_netfilter or veth")
	}
	if l := ls("/etc/systemd/system/multi-user.target.wants"); !strings.Contains(l, "docker.service") {
		t.Errorf("docker.service is not enabled:\n%s", l)
	}
}
