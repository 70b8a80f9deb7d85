package disk

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/sysexec"
)

const mib = 1 << 20

// writeSparseImage writes a file with: data at 0, a hole, an explicitly
// written zero MiB (allocated in the source, a hole in a sparse copy), data
// at an unaligned offset, a hole, a short unaligned tail and a final hole.
func writeSparseImage(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pat := func(n int, seed byte) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = seed + byte(i%251) + 1
			if b[i] == 0 {
				b[i] = 1
			}
		}
		return b
	}
	writes := []struct {
		off  int64
		data []byte
	}{
		{0, pat(64<<10, 1)},
		{10 * mib, make([]byte, mib)},    // allocated zeros
		{12*mib + 1234, pat(100_000, 7)}, // unaligned data
		{12*mib + 500_000, pat(8192, 9)}, // same extent, after a zero gap
		{40*mib - 3000, pat(3000-17, 3)}, // unaligned tail ...
	}
	for _, w := range writes {
		if _, err := f.WriteAt(w.data, w.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(48*mib + 5); err != nil { // ... then a final hole, odd size
		t.Fatal(err)
	}
}

func blocks(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks
}

func sameContent(t *testing.T, a, b string) {
	t.Helper()
	da, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(da, db) {
		t.Fatalf("%s and %s differ (sizes %d, %d)", a, b, len(da), len(db))
	}
}

func checkMode0600(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0o600 {
		t.Fatalf("%s mode = %v, want -rw-------", path, fi.Mode())
	}
}

// TestSparseCopy exercises the fallback directly, whatever the temp
// filesystem supports.
func TestSparseCopy(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "base.ext4"), filepath.Join(dir, "copy.ext4")
	writeSparseImage(t, src)
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := createExclusive(dst)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := in.Stat()
	if err := sparseCopy(out, in, fi.Size()); err != nil {
		t.Fatal(err)
	}
	out.Close()
	sameContent(t, src, dst)
	checkSparser(t, src, dst)
}

// checkSparser asserts dst keeps src's holes and drops its zero blocks: the
// source allocates ~1.2 MiB of data plus 1 MiB of written zeros.
func checkSparser(t *testing.T, src, dst string) {
	t.Helper()
	sb, db := blocks(t, src), blocks(t, dst)
	t.Logf("st_blocks: src %d (%d KiB), dst %d (%d KiB)", sb, sb/2, db, db/2)
	if db*512 > 400<<10 {
		t.Errorf("copy allocates %d KiB, want < 400 KiB (holes or zero blocks were written)", db/2)
	}
	if db >= sb {
		t.Errorf("copy allocates %d blocks, source %d: written zeros were copied", db, sb)
	}
}

func TestCloneRootfsOnTempDir(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "base.ext4"), filepath.Join(dir, "vm.ext4")
	writeSparseImage(t, src)
	m, err := CloneRootfs(src, dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("method on %s: %s", dir, m)
	if m != Reflink && m != SparseCopy {
		t.Fatalf("method %q", m)
	}
	sameContent(t, src, dst)
	checkMode0600(t, dst)
	if m == SparseCopy {
		checkSparser(t, src, dst)
	}
}

func TestCloneRootfsEmptyAndTiny(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string][]byte{"empty": nil, "tiny": []byte("hello"), "zeros": make([]byte, 3*4096+1)} {
		src, dst := filepath.Join(dir, name), filepath.Join(dir, name+".copy")
		if err := os.WriteFile(src, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := CloneRootfs(src, dst); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		sameContent(t, src, dst)
	}
}

func TestCloneRootfsRefusesExistingDst(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "base")
	if err := os.WriteFile(src, []byte("base"), 0o644); err != nil {
		t.Fatal(err)
	}
	existing := filepath.Join(dir, "existing")
	if err := os.WriteFile(existing, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := CloneRootfs(src, existing); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("existing dst: err = %v, want ErrExist", err)
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep me" {
		t.Fatalf("existing dst was modified: %q", b)
	}

	// A symlink at dst is never followed, even a dangling one.
	target := filepath.Join(dir, "target")
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if _, err := CloneRootfs(src, link); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("symlink dst: err = %v, want ErrExist", err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("symlink target was created")
	}
}

func TestCloneRootfsBadBase(t *testing.T) {
	dir := t.TempDir()
	for _, base := range []string{dir, filepath.Join(dir, "missing")} {
		dst := filepath.Join(dir, "dst")
		if _, err := CloneRootfs(base, dst); err == nil {
			t.Fatalf("base %s: no error", base)
		}
		if _, err := os.Lstat(dst); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("base %s: dst left behind", base)
		}
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// mountFS mounts fstype from src (a device, image or "none") on a new temp
// dir and unmounts it (detaching any loop device) in cleanup.
func mountFS(t *testing.T, fstype, src, opts string) string {
	t.Helper()
	mnt := t.TempDir()
	args := []string{"-t", fstype}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	if out, err := exec.Command("mount", append(args, src, mnt)...).CombinedOutput(); err != nil {
		t.Skipf("mount %s %s: %v: %s", fstype, src, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
		if strings.Contains(opts, "loop") {
			// mount -o loop sets autoclear; make sure nothing is left.
			out, _ := exec.Command("losetup", "-j", src).Output()
			if s := strings.TrimSpace(string(out)); s != "" {
				dev, _, _ := strings.Cut(s, ":")
				exec.Command("losetup", "-d", dev).Run()
				t.Errorf("loop device left attached to %s: %s", src, s)
			}
		}
	})
	return mnt
}

// xfsReflinkDir returns a directory on a freshly made, loop-mounted XFS with
// reflink enabled.
func xfsReflinkDir(t *testing.T) string {
	t.Helper()
	requireRoot(t)
	if _, err := exec.LookPath("mkfs.xfs"); err != nil {
		t.Skip("xfsprogs not installed")
	}
	img := filepath.Join(t.TempDir(), "xfs.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(512 * mib)
	f.Close()
	if out, err := exec.Command("mkfs.xfs", "-q", "-m", "reflink=1", img).CombinedOutput(); err != nil {
		t.Skipf("mkfs.xfs: %v: %s", err, out)
	}
	return mountFS(t, "xfs", img, "loop")
}

func TestCloneRootfsReflinkOnXFS(t *testing.T) {
	mnt := xfsReflinkDir(t)
	src, dst := filepath.Join(mnt, "base.ext4"), filepath.Join(mnt, "vm.ext4")
	writeSparseImage(t, src)
	// 8 MiB more data, so that a copy (even a sparse one) would show up in
	// the free-space check below.
	f, err := os.OpenFile(src, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(bytes.Repeat([]byte{0xab}, 8*mib), 20*mib)
	f.Close()
	before := freeBlocks(t, mnt)
	m, err := CloneRootfs(src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if m != Reflink {
		t.Fatalf("method = %q, want %q", m, Reflink)
	}
	sameContent(t, src, dst)
	checkMode0600(t, dst)
	// A reflink shares the base's extents: cloning ~9 MiB of data must not
	// consume that much space.
	if used := (before - freeBlocks(t, mnt)); used > 1*mib {
		t.Errorf("reflink used %d bytes of free space", used)
	}
	// And the copy is private: writing to it leaves the base alone.
	f, err = os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("CHANGED"), 0)
	f.Close()
	if b, _ := os.ReadFile(src); bytes.HasPrefix(b, []byte("CHANGED")) {
		t.Fatal("writing the clone changed the base")
	}
}

// TestCloneRootfsCrossFilesystemFallsBack: FICLONE across filesystems fails
// with EXDEV, and the sparse copy takes over.
func TestCloneRootfsCrossFilesystemFallsBack(t *testing.T) {
	mnt := xfsReflinkDir(t)
	src := filepath.Join(mnt, "base.ext4")
	writeSparseImage(t, src)
	dst := filepath.Join(t.TempDir(), "vm.ext4")
	m, err := CloneRootfs(src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if m != SparseCopy {
		t.Fatalf("method = %q, want %q", m, SparseCopy)
	}
	sameContent(t, src, dst)
	checkSparser(t, src, dst)
}

// TestCloneRootfsRemovesPartialCopy fills a small tmpfs mid-copy.
func TestCloneRootfsRemovesPartialCopy(t *testing.T) {
	requireRoot(t)
	mnt := mountFS(t, "tmpfs", "none", "size=1m")
	src := filepath.Join(t.TempDir(), "base")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(bytes.Repeat([]byte{0xab}, 4*mib))
	f.Close()
	dst := filepath.Join(mnt, "vm.ext4")
	_, err = CloneRootfs(src, dst)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("err = %v, want ENOSPC", err)
	}
	if _, err := os.Lstat(dst); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("partial copy left behind: %v", err)
	}
}

func freeBlocks(t *testing.T, dir string) int64 {
	t.Helper()
	var s syscall.Statfs_t
	if err := syscall.Statfs(dir, &s); err != nil {
		t.Fatal(err)
	}
	return int64(s.Bfree) * s.Bsize
}

func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := sysexec.LookSystemPath(tool); err != nil {
			t.Skip(err)
		}
	}
}

type debugfsEntry struct {
	mode, uid, gid, size string
}

// debugfsLs runs debugfs -R 'ls -l DIR' on img and indexes the entries by
// name.
func debugfsLs(t *testing.T, img, dir string) map[string]debugfsEntry {
	t.Helper()
	debugfs, _ := sysexec.LookSystemPath("debugfs")
	out, err := exec.Command(debugfs, "-R", "ls -l "+dir, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs: %v: %s", err, out)
	}
	ents := map[string]debugfsEntry{}
	for _, line := range strings.Split(string(out), "\n") {
		// " 12  100644 (1)      0      0       6 25-Nov-2025 21:50 hello"
		f := strings.Fields(line)
		if len(f) < 9 || !strings.HasPrefix(f[2], "(") {
			continue
		}
		ents[f[len(f)-1]] = debugfsEntry{mode: f[1], uid: f[3], gid: f[4], size: f[5]}
	}
	if len(ents) == 0 {
		t.Fatalf("debugfs listed nothing:\n%s", out)
	}
	return ents
}

func debugfsCat(t *testing.T, img, path string) string {
	t.Helper()
	debugfs, _ := sysexec.LookSystemPath("debugfs")
	out, err := exec.Command(debugfs, "-R", "cat "+path, img).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(out)
}

func TestMakeWorkDiskSeeded(t *testing.T) {
	requireTools(t, "mkfs.ext4", "debugfs")
	dir := t.TempDir()
	seed := filepath.Join(dir, "seed")
	os.MkdirAll(filepath.Join(seed, ".ssh"), 0o700)
	os.WriteFile(filepath.Join(seed, ".bashrc"), []byte("export PS1='banger$ '\n"), 0o644)
	os.WriteFile(filepath.Join(seed, ".ssh", "authorized_keys"), []byte("ssh-ed25519 AAAA test\n"), 0o600)
	os.Symlink(".bashrc", filepath.Join(seed, ".profile"))

	img := filepath.Join(dir, "root.ext4")
	const size = 64 * mib
	if err := MakeWorkDisk(context.Background(), img, size, seed); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != size {
		t.Errorf("size = %d, want %d", fi.Size(), size)
	}
	checkMode0600(t, img)
	if alloc := blocks(t, img) * 512; alloc > size/4 {
		t.Errorf("image allocates %d of %d bytes: not sparse / not lazily initialised", alloc, size)
	}

	ents := debugfsLs(t, img, "/")
	t.Logf("entries: %v", ents)
	if e := ents["."]; e.uid != "0" || e.gid != "0" {
		t.Errorf("root dir owned by %s:%s, want 0:0", e.uid, e.gid)
	}
	for _, name := range []string{".bashrc", ".ssh", ".profile", "lost+found"} {
		e, ok := ents[name]
		if !ok {
			t.Errorf("%s missing from the image", name)
			continue
		}
		if os.Geteuid() == 0 && (e.uid != "0" || e.gid != "0") {
			t.Errorf("%s owned by %s:%s, want 0:0", name, e.uid, e.gid)
		}
	}
	if m := ents[".bashrc"].mode; m != "100644" {
		t.Errorf(".bashrc mode %s, want 100644", m)
	}
	if m := ents[".profile"].mode; m != "120777" {
		t.Errorf(".profile mode %s, want a symlink (120777)", m)
	}
	if m := ents[".ssh"].mode; m != "40700" {
		t.Errorf(".ssh mode %s, want 40700", m)
	}
	if got := debugfsCat(t, img, "/.ssh/authorized_keys"); got != "ssh-ed25519 AAAA test\n" {
		t.Errorf("authorized_keys = %q", got)
	}
}

func TestMakeWorkDiskUnseeded(t *testing.T) {
	requireTools(t, "mkfs.ext4", "debugfs")
	img := filepath.Join(t.TempDir(), "root.ext4")
	if err := MakeWorkDisk(context.Background(), img, 32*mib, ""); err != nil {
		t.Fatal(err)
	}
	ents := debugfsLs(t, img, "/")
	if e := ents["."]; e.uid != "0" || e.gid != "0" {
		t.Errorf("root dir owned by %s:%s, want 0:0", e.uid, e.gid)
	}
	if len(ents) != 3 { // ., .., lost+found
		t.Errorf("unexpected entries: %v", ents)
	}
}

func TestMakeWorkDiskFailuresRemoveFile(t *testing.T) {
	requireTools(t, "mkfs.ext4")
	dir := t.TempDir()
	bigSeed := filepath.Join(dir, "bigseed")
	os.Mkdir(bigSeed, 0o755)
	os.WriteFile(filepath.Join(bigSeed, "big"), bytes.Repeat([]byte{1}, 8*mib), 0o644)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()

	cases := []struct {
		name string
		ctx  context.Context
		size int64
		seed string
		want string
	}{
		{"too small for ext4", context.Background(), 4096, "", "mkfs.ext4"},
		{"seed does not fit", context.Background(), 4 * mib, bigSeed, "mkfs.ext4"},
		{"cancelled", cancelled, 32 * mib, "", "context canceled"},
		{"missing seed", context.Background(), 32 * mib, filepath.Join(dir, "nope"), "no such file"},
		{"seed is a file", context.Background(), 32 * mib, filepath.Join(bigSeed, "big"), "not a directory"},
		{"zero size", context.Background(), 0, "", "size must be positive"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := filepath.Join(dir, "root.ext4")
			err := MakeWorkDisk(c.ctx, img, c.size, c.seed)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want one containing %q", err, c.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			if _, err := os.Lstat(img); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("%s left behind", img)
			}
		})
	}
}

func TestMakeWorkDiskRefusesExisting(t *testing.T) {
	requireTools(t, "mkfs.ext4")
	img := filepath.Join(t.TempDir(), "root.ext4")
	os.WriteFile(img, []byte("precious"), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := MakeWorkDisk(ctx, img, 32*mib, ""); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("err = %v, want ErrExist", err)
	}
	if b, _ := os.ReadFile(img); string(b) != "precious" {
		t.Fatal("existing file was changed")
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"1048576":  1048576,
		"1":        1,
		"512B":     512,
		"64k":      64 << 10,
		"64K":      64 << 10,
		"64KiB":    64 << 10,
		"512M":     512 << 20,
		"512m":     512 << 20,
		"512MiB":   512 << 20,
		"2G":       2 << 30,
		"1GiB":     1 << 30,
		"1gib":     1 << 30,
		"3T":       3 << 40,
		"1TiB":     1 << 40,
		" 8G ":     8 << 30,
		"8388607T": 8388607 << 40,
	}
	for in, want := range good {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	bad := map[string]string{
		"":                     "empty size",
		"   ":                  "empty size",
		"G":                    "must start with a number",
		"-1G":                  "must start with a number",
		"+1G":                  "must start with a number",
		"0":                    "greater than zero",
		"0G":                   "greater than zero",
		"1.5G":                 "fractions are not supported",
		"1,5G":                 "fractions are not supported",
		"1GB":                  `unit "GB" is ambiguous`,
		"1mb":                  `unit "mb" is ambiguous`,
		"1X":                   `unknown unit "X"`,
		"1 G":                  `unknown unit " G"`,
		"1Gi":                  `unknown unit "Gi"`,
		"1Gib2":                `unknown unit "Gib2"`,
		"8388608T":             "too large",
		"99999999999999999999": "too large",
		"0x10":                 `unknown unit "x10"`,
	}
	for in, want := range bad {
		_, err := ParseSize(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSize(%q) error = %v, want one containing %q", in, err, want)
		}
	}
}
