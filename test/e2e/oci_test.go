package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"io/fs"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/testutil"
)

// tarTree writes dir as an uncompressed layer tar (owners from the files,
// as root extracted them), skipping paths for which skip is true.
func tarTree(t *testing.T, dir string, skip func(rel string) bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		if skip(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			link, _ = os.Readlink(p)
		}
		if fi.Mode()&(fs.ModeDevice|fs.ModeNamedPipe|fs.ModeSocket) != 0 {
			return nil
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		h.Name = rel
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			h.Uid, h.Gid = int(st.Uid), int(st.Gid)
		}
		h.Uname, h.Gname = "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.Copy(tw, f)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tw.Close()
	return buf.Bytes()
}

func tarOf(t *testing.T, entries ...tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		body := h.Linkname
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body))
			h.Linkname = ""
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func layerOf(t *testing.T, b []byte) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestOCIImport builds an image in the test (the built-in guest's busybox and
// dropbear, without banger's init or scripts, plus a second layer with a
// whiteout and a new file), serves it from go-containerregistry's in-process
// registry inside the test's netns, pulls it with `image pull`, boots a VM
// from it and runs a command; then prunes the layer cache, dry first.
func TestOCIImport(t *testing.T) {
	testutil.RequiresGuest(t)
	art := guestArtifacts(t)
	v := newVMEnv(t)

	root := tinyTree(t, art.Rootfs)
	os.WriteFile(filepath.Join(root, "etc", "doomed"), []byte("layer 1\n"), 0o644)
	base := tarTree(t, root, func(rel string) bool {
		return rel == "etc/banger" || rel == "etc/inittab" || rel == "lost+found"
	})
	top := tarOf(t,
		tar.Header{Typeflag: tar.TypeReg, Name: "etc/.wh.doomed", Mode: 0o644},
		tar.Header{Typeflag: tar.TypeReg, Name: "hello.txt", Mode: 0o640, Uid: 1000, Gid: 1000, Linkname: "from layer 2\n"},
		tar.Header{Typeflag: tar.TypeDir, Name: "opt/tool/bin/", Mode: 0o755},
		tar.Header{Typeflag: tar.TypeReg, Name: "opt/tool/bin/mytool", Mode: 0o755, Linkname: "#!/bin/sh\necho \"mytool: $GREETING\"\n"},
	)
	// ENV as images declare it: commands see it (PATH finds mytool).
	ref := pushImage(t, v, "e2e/tiny:v1", []string{"PATH=/opt/tool/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=it's the image's"}, base, top)

	var im api.Image
	if err := json.Unmarshal([]byte(v.must("image", "pull", ref, "--name", "ocitiny", "--json")), &im); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(im.Source, "oci "+ref+"@sha256:") {
		t.Fatalf("image source %q", im.Source)
	}
	out := v.must("vm", "run", "--rm", "--image", "ocitiny", "--",
		"sh", "-c", "cat /hello.txt; stat -c '%u:%g %a' /hello.txt; test -e /etc/doomed && echo doomed-present || echo doomed-gone; test -e /etc/banger && echo banger-scripts || echo no-banger-scripts")
	want := "from layer 2\n1000:1000 640\ndoomed-gone\nno-banger-scripts\n"
	if out != want {
		t.Fatalf("guest printed %q, want %q", out, want)
	}
	if out := v.must("vm", "run", "--rm", "--image", "ocitiny", "--", "mytool"); out != "mytool: it's the image's\n" {
		t.Fatalf("the image's ENV: %q", out)
	}

	// banger's guest kit started the agent: vm ports sees the image's dropbear.
	v.must("vm", "create", "--name", "oci1", "--image", "ocitiny")
	var ports []api.VMPorts
	json.Unmarshal([]byte(v.must("vm", "ports", "oci1", "--json")), &ports)
	if len(ports) != 1 || len(ports[0].Listeners) == 0 || ports[0].Listeners[0].Port != 22 || ports[0].Listeners[0].Process != "dropbear" {
		t.Fatalf("vm ports oci1: %+v", ports)
	}
	v.must("vm", "delete", "oci1")

	// Pulling the same name again needs --force.
	if r := v.banger("image", "pull", ref, "--name", "ocitiny"); r.code == 0 || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("second pull: exit %d: %s", r.code, r.stderr)
	}

	// Cache prune: dry first (nothing deleted), then for real.
	blobs := filepath.Join(testutil.CacheDir(), "xdg", "banger", "oci", "blobs", "sha256")
	before, _ := os.ReadDir(blobs)
	if len(before) < 2 {
		t.Fatalf("%d cached blobs, want the 2 layers at least", len(before))
	}
	var pr api.CachePruneResult
	json.Unmarshal([]byte(v.must("image", "cache", "prune", "--dry-run", "--json")), &pr)
	if !pr.DryRun || pr.Blobs < 2 || pr.FreedBytes <= 0 {
		t.Fatalf("dry run: %+v", pr)
	}
	if after, _ := os.ReadDir(blobs); len(after) != len(before) {
		t.Fatalf("dry run deleted blobs: %d -> %d", len(before), len(after))
	}
	out = v.must("image", "cache", "prune")
	if !strings.HasPrefix(out, "freed ") {
		t.Fatalf("prune printed %q", out)
	}
	if after, _ := os.ReadDir(blobs); len(after) != 0 {
		t.Fatalf("%d blobs left after prune", len(after))
	}
	// The image does not depend on the cache.
	if out := v.must("vm", "run", "--rm", "--image", "ocitiny", "--", "cat", "/hello.txt"); out != "from layer 2\n" {
		t.Fatalf("after prune: %q", out)
	}
}

// TestImageRegisterPromoteAndKernelImport: a registered ext4 outside the
// state dir is refused with the fix named, boots once promoted; kernel
// import and image build answer from the guest cache.
func TestImageRegisterPromoteAndKernelImport(t *testing.T) {
	testutil.RequiresGuest(t)
	art := guestArtifacts(t)
	v := newVMEnv(t)
	own := filepath.Join(t.TempDir(), "mine.ext4")
	runTool(t, "cp", "--sparse=always", art.Rootfs, own)

	if r := v.banger("image", "register", "--name", "mine", "--rootfs", "/etc/passwd"); r.code == 0 || !strings.Contains(r.stderr, "not an ext4") {
		t.Fatalf("register /etc/passwd: %d %s", r.code, r.stderr)
	}
	if r := v.banger("image", "register", "--name", "mine", "--rootfs", own, "--kernel", "x", "--vmlinux", own); r.code != 2 || !strings.Contains(r.stderr, "mutually exclusive") {
		t.Fatalf("--kernel with --vmlinux: %d %s", r.code, r.stderr)
	}
	v.must("image", "register", "--name", "mine", "--rootfs", own)
	r := v.banger("vm", "create", "--name", "m1", "--image", "mine")
	if r.code == 0 || !strings.Contains(r.stderr, "banger image promote mine") {
		t.Fatalf("create from an unpromoted image: %d %s", r.code, r.stderr)
	}
	if vms := strings.TrimSpace(v.must("vm", "list", "--json")); vms != "[]" {
		t.Fatalf("a refused create left %s", vms)
	}
	v.must("image", "promote", "mine")
	var im api.Image
	json.Unmarshal([]byte(v.must("image", "show", "mine", "--json")), &im)
	if !im.Managed || !strings.HasPrefix(im.Rootfs, filepath.Join(v.home, ".local", "state", "banger", "images")) {
		t.Fatalf("promoted: %+v", im)
	}
	if out := v.must("vm", "run", "--rm", "--image", "mine", "--", "echo", "promoted"); out != "promoted\n" {
		t.Fatalf("vm run: %q", out)
	}
	if _, err := os.Stat(own); err != nil {
		t.Fatalf("promote touched the original: %v", err)
	}

	var k api.Kernel
	json.Unmarshal([]byte(v.must("kernel", "import", "--name", "imported", "--json")), &k)
	if k.Name != "imported" || k.Version != art.KernelVersion || k.Initrd == "" || k.Modules == "" {
		t.Fatalf("kernel import: %+v", k)
	}
	for _, f := range []string{k.Vmlinux, k.Vmlinuz, k.Initrd, filepath.Join(k.Modules, art.KernelVersion, "modules.dep")} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("kernel import: %v", err)
		}
	}
	v.must("kernel", "rm", "imported")
	if _, err := os.Stat(k.Vmlinux); err == nil {
		t.Fatal("kernel rm left its files")
	}
	if out := v.must("image", "build", "tiny"); !strings.HasPrefix(out, "tiny built") {
		t.Fatalf("image build: %q", out)
	}
}

// tinyTree dumps the built-in tiny rootfs (busybox, dropbear and its
// libraries) into a directory, without mounting it.
func tinyTree(t *testing.T, rootfs string) string {
	t.Helper()
	tree := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(tree, 0o755)
	runTool(t, "debugfs", "-R", "rdump / "+tree, rootfs)
	// debugfs rdump of / lands in tree/ itself or in tree/<something>; find the root.
	if _, err := os.Stat(filepath.Join(tree, "etc")); err == nil {
		return tree
	}
	ents, _ := os.ReadDir(tree)
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(tree, e.Name(), "etc")); err == nil {
			return filepath.Join(tree, e.Name())
		}
	}
	t.Fatalf("no root in the dump of %s", rootfs)
	return ""
}

// pushImage builds a linux/amd64 image from layer tars, serves it from
// go-containerregistry's in-process registry with two listeners (the test
// pushes through the root namespace's loopback, the daemon pulls through
// the netns's) and returns the reference the daemon uses.
func pushImage(t *testing.T, v *vmEnv, repoTag string, env []string, layers ...[]byte) string {
	t.Helper()
	var ls []v1.Layer
	for _, l := range layers {
		ls = append(ls, layerOf(t, l))
	}
	img, err := mutate.AppendLayers(empty.Image, ls...)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Cmd = []string{"/bin/sh"}
	cf.Config.Env = env
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	reg := registry.New()
	pushSrv := httptest.NewServer(reg)
	t.Cleanup(pushSrv.Close)
	ln := listenInNS(t, v.ns)
	serve(t, ln, reg)
	push, _ := name.ParseReference(strings.TrimPrefix(pushSrv.URL, "http://") + "/" + repoTag)
	if err := remote.Write(push, img); err != nil {
		t.Fatalf("push: %v", err)
	}
	return "127.0.0.1:" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port) + "/" + repoTag
}

// TestOCIFirstBootInstallsSSHServerFakeApk: an image without an SSH server
// gets one on first boot from the package manager /etc/os-release names.
// The package manager is a stand-in (an "apk" script that installs dropbear
// from a directory in the image): the test network has no Alpine mirror, and
// what is under test is banger's detection and first-boot flow.
func TestOCIFirstBootInstallsSSHServerFakeApk(t *testing.T) {
	testutil.RequiresGuest(t)
	art := guestArtifacts(t)
	v := newVMEnv(t)
	root := tinyTree(t, art.Rootfs)
	os.MkdirAll(filepath.Join(root, "opt", "pkg"), 0o755)
	if err := os.Rename(filepath.Join(root, "usr", "sbin", "dropbear"), filepath.Join(root, "opt", "pkg", "dropbear")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "etc", "os-release"), []byte("ID=alpine\nNAME=\"Alpine Linux\"\n"), 0o644)
	os.WriteFile(filepath.Join(root, "sbin", "apk"), []byte(`#!/bin/sh
# test stand-in for Alpine's apk
[ "$*" = "add --no-cache openssh-server" ] || { echo "fake apk: unexpected: $*" >&2; exit 1; }
cp /opt/pkg/dropbear /usr/sbin/dropbear && echo "fake apk: installed openssh-server"
`), 0o755)
	base := tarTree(t, root, func(rel string) bool {
		return rel == "etc/banger" || rel == "etc/inittab" || rel == "lost+found"
	})
	ref := pushImage(t, v, "e2e/nossh:v1", nil, base)
	v.must("image", "pull", ref, "--name", "nossh")
	out := v.must("vm", "run", "--rm", "--image", "nossh", "--", "sh", "-c", "cat /run/banger/ssh-install.log; test -x /usr/sbin/dropbear && echo has-dropbear")
	if !strings.Contains(out, "fake apk: installed openssh-server") || !strings.HasSuffix(out, "has-dropbear\n") {
		t.Fatalf("first boot: %q", out)
	}
}
