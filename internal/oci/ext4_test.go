package oci

import (
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-dev/banger/internal/sysexec"
)

func needE2fsprogs(t *testing.T) {
	t.Helper()
	for _, n := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		if _, err := sysexec.LookPath(n); err != nil {
			t.Skip(err)
		}
	}
}

func debugfsRun(t *testing.T, img, req string) (stdout, stderr string) {
	t.Helper()
	dbg, _ := sysexec.LookPath("debugfs")
	cmd := exec.Command(dbg, "-R", req, img)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("debugfs -R %q: %v: %s", req, err, e.String())
	}
	return o.String(), e.String()
}

type inodeInfo struct {
	typ            string
	mode           uint64
	uid, gid, link int
	symlink        string
}

var (
	reStatType  = regexp.MustCompile(`Type: (\w+)\s+Mode:\s+(\d+)`)
	reStatOwner = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
	reStatLinks = regexp.MustCompile(`Links: (\d+)`)
	reStatFast  = regexp.MustCompile(`Fast link dest: "(.*)"`)
)

// statImage returns the inode of p in img, or ok=false when it is absent.
func statImage(t *testing.T, img, p string) (inodeInfo, bool) {
	t.Helper()
	out, errOut := debugfsRun(t, img, `stat "`+p+`"`)
	if strings.Contains(errOut, "File not found") {
		return inodeInfo{}, false
	}
	var in inodeInfo
	m := reStatType.FindStringSubmatch(out)
	o := reStatOwner.FindStringSubmatch(out)
	l := reStatLinks.FindStringSubmatch(out)
	if m == nil || o == nil || l == nil {
		t.Fatalf("stat %s: unexpected output:\n%s\n%s", p, out, errOut)
	}
	in.typ = m[1]
	in.mode, _ = strconv.ParseUint(m[2], 8, 32)
	in.uid, _ = strconv.Atoi(o[1])
	in.gid, _ = strconv.Atoi(o[2])
	in.link, _ = strconv.Atoi(l[1])
	if f := reStatFast.FindStringSubmatch(out); f != nil {
		in.symlink = f[1]
	}
	return in, true
}

func e2fsckClean(t *testing.T, img string) {
	t.Helper()
	fsck, _ := sysexec.LookPath("e2fsck")
	if out, err := exec.Command(fsck, "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
}

func TestBuildExt4(t *testing.T) {
	needE2fsprogs(t)
	tree := flattenStandard(t)
	if err := tree.AddFile("/etc/banger-id", 0o400, []byte("vm-1\n")); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "out", "rootfs.ext4")
	if err := BuildExt4(context.Background(), tree, img, 64<<20); err != nil {
		t.Fatalf("BuildExt4: %v", err)
	}
	checkImage(t, img)
	// File capabilities survive (the foreign-owner test's chown clears them
	// on the host copy, as the kernel does).
	if out, _ := debugfsRun(t, img, "ea_get /usr/bin/ping security.capability"); !strings.Contains(out, "01 00 00 02 00 20") {
		t.Errorf("ping's security.capability: %q", out)
	}

	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() < MinExt4Size || fi.Size()%mib != 0 {
		t.Errorf("size %d: want >= %d and MiB-aligned", fi.Size(), MinExt4Size)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Blocks*512 >= fi.Size()/2 {
		t.Errorf("image is not sparse: %d of %d bytes allocated", st.Blocks*512, fi.Size())
	}
	ents, _ := os.ReadDir(filepath.Dir(img))
	if len(ents) != 1 {
		t.Errorf("leftovers next to the image: %v", ents)
	}
	if out, _ := debugfsRun(t, img, `cat /etc/banger-id`); out != "vm-1\n" {
		t.Errorf("cat /etc/banger-id = %q", out)
	}
	if in, _ := statImage(t, img, "/etc/banger-id"); in.mode != 0o400 || in.uid != 0 {
		t.Errorf("/etc/banger-id: %+v", in)
	}
}

// checkImage verifies the image built from standardLayers.
func checkImage(t *testing.T, img string) {
	t.Helper()
	e2fsckClean(t, img)
	want := map[string]inodeInfo{
		"/":                 {typ: "directory", mode: 0o755},
		"/usr/bin/su":       {typ: "regular", mode: 0o4755, link: 2},
		"/usr/bin/su-link":  {typ: "regular", mode: 0o4755, link: 2},
		"/sgid":             {typ: "regular", mode: 0o2755, gid: 50, link: 1},
		"/home/user":        {typ: "directory", mode: 0o700, uid: 1000, gid: 1000},
		"/home/user/secret": {typ: "regular", mode: 0o600, uid: 1000, gid: 1000, link: 1},
		"/tmp":              {typ: "directory", mode: 0o1777},
		"/etc/readonly":     {typ: "regular", mode: 0o444, link: 1},
		"/etc/os-release":   {typ: "symlink", mode: 0o777, link: 1, symlink: "../usr/lib/os-release"},
		"/" + weirdName:     {typ: "regular", mode: 0o640, uid: 1234, gid: 5678, link: 1},
	}
	for p, w := range want {
		got, ok := statImage(t, img, p)
		if !ok {
			t.Errorf("%s missing from the image", p)
			continue
		}
		if w.link == 0 {
			got.link = 0 // directories: not checked
		}
		if got != w {
			t.Errorf("%s: got %+v, want %+v", p, got, w)
		}
	}
	for _, p := range []string{"/etc/gone", "/var/lib/stuff", "/opq/lower1", "/opq/sub", "/dev/null", "/run/fifo"} {
		if _, ok := statImage(t, img, p); ok {
			t.Errorf("%s is in the image", p)
		}
	}
	for p, body := range map[string]string{"/etc/hostname": "layer2\n", "/etc/via-link": "vl", "/opq/new": "n", "/" + weirdName: "weird"} {
		if out, _ := debugfsRun(t, img, `cat "`+p+`"`); out != body {
			t.Errorf("cat %s = %q, want %q", p, out, body)
		}
	}
	ls, _ := debugfsRun(t, img, "ls /opq")
	for _, n := range []string{"keep-before", "new"} {
		if !strings.Contains(ls, n) {
			t.Errorf("ls /opq lacks %s: %s", n, ls)
		}
	}
}

// TestBuildExt4ForeignOwners makes every host copy look like a non-root
// extraction (another owner, other modes): debugfs must set them all.
func TestBuildExt4ForeignOwners(t *testing.T) {
	needE2fsprogs(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown the host copies")
	}
	tree := flattenStandard(t)
	err := filepath.WalkDir(tree.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(p, 4242, 4242); err != nil {
			return err
		}
		if d.Type().IsRegular() {
			return os.Chmod(p, 0o666)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "rootfs.ext4")
	if err := BuildExt4(context.Background(), tree, img, 0); err != nil {
		t.Fatalf("BuildExt4: %v", err)
	}
	checkImage(t, img)
	if in, _ := statImage(t, img, "/usr/lib/os-release"); in.uid != 0 || in.gid != 0 || in.mode != 0o644 {
		t.Errorf("/usr/lib/os-release: %+v", in)
	}
}

func TestBuildExt4Failure(t *testing.T) {
	needE2fsprogs(t)
	tree := flattenStandard(t)
	tree.Owners["/not-on-disk"] = Owner{} // dropped by the rescan, harmless
	tree.Owners["/etc/hostname"] = Owner{UID: -1}
	out := filepath.Join(t.TempDir(), "rootfs.ext4")
	if err := BuildExt4(context.Background(), tree, out, 0); err == nil {
		t.Fatal("BuildExt4 accepted uid -1")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	delete(tree.Owners, "/etc/hostname")
	if err := BuildExt4(ctx, tree, out, 0); err == nil {
		t.Fatal("BuildExt4 with a cancelled context succeeded")
	}
	ents, _ := os.ReadDir(filepath.Dir(out))
	if len(ents) != 0 {
		t.Errorf("leftovers: %v", ents)
	}
}

func TestExt4Size(t *testing.T) {
	for _, tc := range []struct {
		s        treeStats
		headroom int64
		minSize  int64
	}{
		{treeStats{bytes: 1 << 20, alloc: 2 << 20, inodes: 100}, 0, MinExt4Size},
		{treeStats{bytes: 1 << 30, alloc: 1<<30 + 50<<20, inodes: 40000}, 1 << 30, (1<<30+50<<20)*3/2 + 1<<30},
	} {
		size, inodes := ext4Size(tc.s, tc.headroom)
		if size < tc.minSize || size%mib != 0 {
			t.Errorf("%+v: size %d, want >= %d, MiB-aligned", tc.s, size, tc.minSize)
		}
		if inodes < tc.s.inodes*2+inodeSlack {
			t.Errorf("%+v: inodes %d", tc.s, inodes)
		}
	}
}
