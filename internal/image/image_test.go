package image

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
)

func newService(t *testing.T) *Service {
	t.Helper()
	root := t.TempDir()
	l := paths.Layout{Mode: paths.User, StateDir: filepath.Join(root, "state"), CacheDir: filepath.Join(root, "cache"), ConfigDir: filepath.Join(root, "config")}
	os.MkdirAll(l.StateDir, 0o700)
	st, err := store.Open(l.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &Service{Store: st, Layout: l, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// mkExt4 makes a small real ext4 image holding files (path → content).
func mkExt4(t *testing.T, path string, files map[string]string) {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 not installed")
	}
	tree := t.TempDir()
	for p, c := range files {
		os.MkdirAll(filepath.Join(tree, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(tree, p), []byte(c), 0o644)
	}
	os.MkdirAll(filepath.Dir(path), 0o755)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", tree, path, "8M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
}

func TestManagedDirAndRoots(t *testing.T) {
	s := newService(t)
	img := s.Layout.ImagesDir()
	for _, c := range []struct{ file, want string }{
		{filepath.Join(img, "tiny", "rootfs.ext4"), filepath.Join(img, "tiny")},
		{filepath.Join(img, "a-123", "x", "y"), filepath.Join(img, "a-123")},
		{img, ""},
		{filepath.Join(img, "..", "kernels", "k", "vmlinux"), ""},
		{"/srv/mine.ext4", ""},
	} {
		if got := s.managedDir(img, c.file); got != c.want {
			t.Errorf("managedDir(%s) = %q, want %q", c.file, got, c.want)
		}
	}
	if !s.underRoots(filepath.Join(s.Layout.CacheDir, "guest", "x")) || s.underRoots("/srv/mine.ext4") || s.underRoots(s.Layout.StateDir+"-evil/x") {
		t.Fatal("underRoots is wrong")
	}
}

func TestRegisterRefusesBadInputAndCreatesNothing(t *testing.T) {
	s := newService(t)
	ctx := context.Background()
	dir := t.TempDir()
	good := filepath.Join(dir, "good.ext4")
	mkExt4(t, good, map[string]string{"etc/hostname": "x\n"})
	notExt4 := filepath.Join(dir, "plain")
	os.WriteFile(notExt4, make([]byte, 4096), 0o644)
	cases := []struct {
		name string
		p    api.ImageRegisterParams
		want string
	}{
		{"bad name", api.ImageRegisterParams{Name: "Bad Name", Rootfs: good}, "invalid image name"},
		{"built-in name", api.ImageRegisterParams{Name: "tiny", Rootfs: good}, "built-in"},
		{"kernel and vmlinux", api.ImageRegisterParams{Name: "a", Rootfs: good, Kernel: "k", Vmlinux: good}, "mutually exclusive"},
		{"initrd alone", api.ImageRegisterParams{Name: "a", Rootfs: good, Initrd: good}, "--initrd needs --vmlinux"},
		{"relative rootfs", api.ImageRegisterParams{Name: "a", Rootfs: "good.ext4"}, "absolute"},
		{"missing rootfs", api.ImageRegisterParams{Name: "a", Rootfs: filepath.Join(dir, "nope")}, "--rootfs"},
		{"not ext4", api.ImageRegisterParams{Name: "a", Rootfs: notExt4}, "not an ext4"},
		{"unknown kernel", api.ImageRegisterParams{Name: "a", Rootfs: good, Kernel: "nope"}, "no kernel"},
		{"relative init", api.ImageRegisterParams{Name: "a", Rootfs: good, Vmlinux: good, Init: "sbin/init"}, "--init"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := s.Register(ctx, c.p)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
			if ims, _ := s.Store.ListImages(ctx); len(ims) != 0 {
				t.Fatalf("images left: %+v", ims)
			}
			if ks, _ := s.Store.ListKernels(ctx); len(ks) != 0 {
				t.Fatalf("kernels left: %+v", ks)
			}
		})
	}
	// With --vmlinux: an unmanaged image and kernel; Resolve names the fix.
	im, err := s.Register(ctx, api.ImageRegisterParams{Name: "mine", Rootfs: good, Vmlinux: good, Init: "/sbin/init"})
	if err != nil {
		t.Fatal(err)
	}
	if im.Managed || im.Kernel != "mine-kernel" {
		t.Fatalf("registered %+v", im)
	}
	if _, err := s.Resolve(ctx, "mine", nil); err == nil || !strings.Contains(err.Error(), "banger image promote mine") {
		t.Fatalf("resolve of an unpromoted image: %v", err)
	}
	if _, err := s.Register(ctx, api.ImageRegisterParams{Name: "mine", Rootfs: good, Kernel: "mine-kernel"}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("second register: %v", err)
	}
	// Promote copies the rootfs and the kernel under the state dir; the originals stay.
	pm, err := s.Promote(ctx, "mine")
	if err != nil {
		t.Fatal(err)
	}
	if !pm.Managed || !strings.HasPrefix(pm.Rootfs, s.Layout.ImagesDir()) {
		t.Fatalf("promoted %+v", pm)
	}
	k, _ := s.ShowKernel(ctx, "mine-kernel")
	if !k.Managed {
		t.Fatalf("kernel not copied: %+v", k)
	}
	r, err := s.Resolve(ctx, "mine", nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Init() != "/sbin/init" {
		t.Fatalf("init %q", r.Init())
	}
	if _, err := os.Stat(good); err != nil {
		t.Fatal("promote removed the original")
	}
	// The kernel cannot go while the image boots it; the image can.
	if err := s.DeleteKernel(ctx, "mine-kernel"); err == nil || !strings.Contains(err.Error(), "used by image(s) mine") {
		t.Fatalf("kernel delete in use: %v", err)
	}
	if err := s.Delete(ctx, "mine"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(pm.Rootfs)); !os.IsNotExist(err) {
		t.Fatalf("managed image dir left: %v", err)
	}
	if err := s.DeleteKernel(ctx, "mine-kernel"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(k.Vmlinux); !os.IsNotExist(err) {
		t.Fatalf("managed kernel file left: %v", err)
	}
}

func TestWorkSeed(t *testing.T) {
	if _, err := exec.LookPath("debugfs"); err != nil {
		t.Skip("debugfs not installed")
	}
	s := newService(t)
	ctx := context.Background()
	rootfs := filepath.Join(s.Layout.ImagesDir(), "deb", "rootfs.ext4")
	mkExt4(t, rootfs, map[string]string{"root/.bashrc": "PS1=guest\n", "root/.config/a": "1\n", "etc/hostname": "x\n"})
	seed := s.workSeed(ctx, rootfs)
	if seed != filepath.Join(s.Layout.ImagesDir(), "deb", workSeedFile) {
		t.Fatalf("seed %q", seed)
	}
	f, _ := os.Open(seed)
	defer f.Close()
	tr := tar.NewReader(f)
	got := map[string]string{}
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		b, _ := io.ReadAll(tr)
		got[h.Name] = string(b)
	}
	if got[".bashrc"] != "PS1=guest\n" || got[".config/a"] != "1\n" || len(got) != 3 {
		t.Fatalf("seed holds %v", got)
	}
	// An image with an empty /root has no seed; an unmanaged one is not seeded.
	empty := filepath.Join(s.Layout.ImagesDir(), "empty", "rootfs.ext4")
	mkExt4(t, empty, map[string]string{"etc/hostname": "x\n"})
	if seed := s.workSeed(ctx, empty); seed != "" {
		t.Fatalf("empty /root seeded: %s", seed)
	}
	outside := filepath.Join(t.TempDir(), "rootfs.ext4")
	mkExt4(t, outside, map[string]string{"root/.bashrc": "x\n"})
	if seed := s.workSeed(ctx, outside); seed != "" {
		t.Fatalf("unmanaged image seeded: %s", seed)
	}
}

func TestPullValidation(t *testing.T) {
	s := newService(t)
	ctx := context.Background()
	for _, c := range []struct {
		p    api.ImagePullParams
		want string
	}{
		{api.ImagePullParams{Ref: " "}, "needs a catalog name or an OCI reference"},
		{api.ImagePullParams{Ref: "tiny"}, "banger image build tiny"},
		{api.ImagePullParams{Ref: "alpine:3", Name: "Bad"}, "invalid --name"},
		{api.ImagePullParams{Ref: "alpine:3", Name: "debian-bookworm"}, "built-in image name"},
	} {
		if _, err := s.PullImage(ctx, c.p, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.p, err, c.want)
		}
	}
	if _, err := s.KernelCatalog(ctx); err == nil || !strings.Contains(err.Error(), "catalog.kernel_url") {
		t.Errorf("kernel catalog without a URL: %v", err)
	}
}

func TestToolsDiskPerAgent(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 not installed")
	}
	s := newService(t)
	bin := filepath.Join(t.TempDir(), "banger-agent")
	os.WriteFile(bin, []byte("#!/bin/sh\necho agent v1\n"), 0o755)
	t.Setenv("BANGER_AGENT_BIN", bin)
	ctx := context.Background()
	a, err := s.ToolsDisk(ctx)
	if err != nil || a == "" {
		t.Fatalf("tools disk: %q %v", a, err)
	}
	if out, err := exec.Command("debugfs", "-R", "cat /banger-agent", a).Output(); err != nil || string(out) != "#!/bin/sh\necho agent v1\n" {
		t.Fatalf("agent on the tools disk: %q %v", out, err)
	}
	again, _ := s.ToolsDisk(ctx)
	if again != a {
		t.Fatalf("same agent, new disk: %s vs %s", a, again)
	}
	os.WriteFile(bin, []byte("#!/bin/sh\necho agent v2\n"), 0o755)
	b, _ := s.ToolsDisk(ctx)
	if b == a || b == "" {
		t.Fatalf("a new agent must get a new tools disk: %s", b)
	}
}

func TestEnvScript(t *testing.T) {
	got := string(envScript([]string{"PATH=/opt/go/bin:/usr/bin", "QUOTE=it's", "bad-name=x", "NOEQ", "EMPTY="}))
	for _, want := range []string{"export PATH='/opt/go/bin:/usr/bin'\n", `export QUOTE='it'\''s'` + "\n", "export EMPTY=''\n"} {
		if !strings.Contains(got, want) {
			t.Fatalf("env script lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "bad-name") || strings.Contains(got, "NOEQ") {
		t.Fatalf("bad entries kept:\n%s", got)
	}
	if envScript(nil) != nil {
		t.Fatal("empty env gives a script")
	}
	out, err := exec.Command("sh", "-c", string(envScript([]string{"QUOTE=it's $HOME `x`"}))+`printf %s "$QUOTE"`).Output()
	if err != nil || string(out) != "it's $HOME `x`" {
		t.Fatalf("sh reads back %q (%v)", out, err)
	}
}
