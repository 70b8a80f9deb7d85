package oci

// Fuzz target for OCI layer flattening: the layers come from any registry
// the user names, so every byte of them is hostile. scripts/fuzz.sh lists
// it. Names carry an "fz" prefix so they cannot collide with the package's
// other test helpers.

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// The caps the target flattens under, small enough for the fuzzer to reach.
var fzLimits = Limits{MaxLayerBytes: 1 << 20, MaxImageBytes: 3 << 19}

// fzFileSizeLimit is RLIMIT_FSIZE while Flatten runs: should the caps ever
// fail, a hostile header gets EFBIG instead of filling the disk.
const fzFileSizeLimit = 8 << 20

// fzMeasure decompresses a layer the way Flatten sniffs it and returns the
// length of its decompressed stream (counted up to 64 MiB) and the sizes
// its regular-file headers (whiteouts aside) declare, up to the first tar
// error (where Flatten stops too).
func fzMeasure(blob []byte) (stream, declared int64) {
	open := func() (io.Reader, func()) {
		br := bufio.NewReader(bytes.NewReader(blob))
		magic, _ := br.Peek(4)
		switch {
		case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
			if zr, err := gzip.NewReader(br); err == nil {
				return zr, func() { zr.Close() }
			}
			return bytes.NewReader(nil), func() {}
		case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
			if zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1)); err == nil {
				return zr, zr.Close
			}
			return bytes.NewReader(nil), func() {}
		}
		return br, func() {}
	}
	r, done := open()
	stream, _ = io.Copy(io.Discard, io.LimitReader(r, 64<<20))
	done()
	r, done = open()
	defer done()
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err != nil {
			return stream, declared
		}
		if _, base := path.Split(path.Clean(hdr.Name)); strings.HasPrefix(base, ".wh.") {
			continue // a whiteout: applied, never written
		}
		if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeGNUSparse {
			if hdr.Size < 0 || hdr.Size > 1<<50 {
				return stream, 1 << 50
			}
			declared += hdr.Size
		}
	}
}

// fzFlatten is FlattenWithLimits under RLIMIT_FSIZE.
func fzFlatten(t *testing.T, ctx context.Context, layers []string, dest string) (*Tree, error) {
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = min(old.Cur, fzFileSizeLimit)
	if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	defer unix.Setrlimit(unix.RLIMIT_FSIZE, &old)
	return FlattenWithLimits(ctx, layers, dest, fzLimits)
}

// fzSecret is the content of the file the target plants beside the
// destination, to see whether any entry reaches it.
const fzSecret = "FUZZ-OUTSIDE-SECRET"

func fzSnapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		desc := fi.Mode().String()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && !fi.IsDir() {
			desc += " nlink=" + strconv.FormatUint(uint64(st.Nlink), 10)
		}
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += ":" + string(b)
		}
		out[filepath.ToSlash(rel)] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// FuzzFlatten: FlattenWithLimits (1 MiB a layer, 1.5 MiB an image) never
// panics, and no layer pair makes it touch anything outside dest (a planted
// directory beside it keeps its files, contents and link counts) or leave
// anything behind when it refuses. It refuses with ErrTooLarge only when a
// layer's decompressed stream or declared file bytes, or the image's, are
// over a cap; and it never accepts layers that declare more file bytes
// than the caps. On success: Tree.Dir is dest, mode 0700; Owners has
// exactly one clean key per entry on disk, keyed by its real path (no
// symlinked parent); no host copy is setuid or setgid and every one is
// owner-writable (files) or owner-searchable (directories); no name holds a
// control character or '"' (the debugfs script quotes names); Bytes and
// Inodes match the tree and Bytes never exceeds what the headers declared;
// Has reports every key; ReadFile, which follows the tree's symlinks as the
// guest would, never returns the planted file.
func FuzzFlatten(f *testing.F) {
	for _, p := range standardLayers(f) {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, []byte{})
	}
	ls := standardLayers(f)
	l1, _ := os.ReadFile(ls[0])
	l2, _ := os.ReadFile(ls[1])
	f.Add(l1, l2)
	f.Add(tarBytes(f,
		symlink("up", "../outside"),
		file("up/escape", "x", 0o644),
		symlink("abs", "/"),
		file("abs/etc/x", "x", 0o644),
		hardlink("h", "up/keep"),
	), tarBytes(f,
		symlink("etc", "../outside"),
		file("etc/.wh.keep", "", 0o644),
		hardlink("etc/hl", "../outside/keep"),
	))
	f.Add(tarBytes(f, dir("a/", 0o755), symlink("a/b", "../../outside/keep"), file("a/c", "c", 0o4755)),
		tarBytes(f, file("a/.wh..wh..opq", "", 0o644), symlink("loop", "loop"), file("loop/x", "x", 0o644)))
	f.Add(gzipBytes(f, tarBytes(f, file("../evil", "x", 0o644))), zstdBytes(f, tarBytes(f, file("ok", "x", 0o644))))

	big := tarBytes(f, file("big", strings.Repeat("z", 1<<20+1), 0o644))
	f.Add(gzipBytes(f, big), []byte{})
	f.Add(tarBytes(f, file("half", strings.Repeat("a", 800<<10), 0o644)), zstdBytes(f, tarBytes(f, file("half2", strings.Repeat("b", 800<<10), 0o644))))

	f.Fuzz(func(t *testing.T, l1, l2 []byte) {
		root := t.TempDir()
		outside := filepath.Join(root, "outside")
		if err := os.MkdirAll(filepath.Join(outside, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(outside, "keep"), []byte(fzSecret), 0o644); err != nil {
			t.Fatal(err)
		}
		before := fzSnapshot(t, outside)
		layers := []string{filepath.Join(root, "l1"), filepath.Join(root, "l2")}
		for i, b := range [][]byte{l1, l2} {
			if err := os.WriteFile(layers[i], b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		dest := filepath.Join(root, "dest")

		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		tree, err := fzFlatten(t, ctx, layers, dest)
		s1, d1 := fzMeasure(l1)
		s2, d2 := fzMeasure(l2)
		layerCap, imageCap := fzLimits.MaxLayerBytes, fzLimits.MaxImageBytes
		overCap := s1 > layerCap || s2 > layerCap || d1 > layerCap || d2 > layerCap || s1+s2 > imageCap || d1+d2 > imageCap

		if after := fzSnapshot(t, outside); !maps.Equal(before, after) {
			t.Fatalf("Flatten changed a directory beside dest:\nbefore %v\n after %v", before, after)
		}
		top, _ := os.ReadDir(root)
		for _, e := range top {
			if n := e.Name(); n != "outside" && n != "l1" && n != "l2" && n != "dest" {
				t.Fatalf("Flatten created %s beside dest", n)
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("Flatten took over 30 s: %v", err)
			}
			if tree != nil {
				t.Fatal("refused but returned a tree")
			}
			if errors.Is(err, syscall.EFBIG) {
				t.Fatalf("Flatten wrote a file past %d bytes (the caps did not hold): %v", fzFileSizeLimit, err)
			}
			if errors.Is(err, ErrTooLarge) && !overCap {
				t.Fatalf("refused as too large (%v), yet the layers hold %d+%d stream bytes declaring %d+%d file bytes", err, s1, s2, d1, d2)
			}
			if _, serr := os.Lstat(dest); !errors.Is(serr, fs.ErrNotExist) {
				t.Fatalf("refused (%v) but left dest behind (%v)", err, serr)
			}
			return
		}
		if d1 > layerCap || d2 > layerCap || d1+d2 > imageCap {
			t.Fatalf("accepted layers declaring %d+%d file bytes, over the caps %d/%d", d1, d2, layerCap, imageCap)
		}
		fzCheckTree(t, tree, dest, d1+d2)
	})
}

func fzCheckTree(t *testing.T, tree *Tree, dest string, declared int64) {
	t.Helper()
	abs, _ := filepath.Abs(dest)
	if tree.Dir != abs {
		t.Fatalf("Tree.Dir = %q, want %q", tree.Dir, abs)
	}
	if fi, err := os.Lstat(dest); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("dest: %v, %v; want a 0700 directory", fi.Mode(), err)
	}
	onDisk := map[string]bool{}
	var bytesOnDisk, inodes int64
	seenInode := map[[2]uint64]bool{}
	err := filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dest, p)
		key := "/"
		if rel != "." {
			key = "/" + filepath.ToSlash(rel)
		}
		onDisk[key] = true
		if p != dest && strings.ContainsFunc(d.Name(), func(r rune) bool { return r < 0x20 || r == 0x7f || r == '"' }) {
			t.Fatalf("%q: a name with a control character or '\"' reached the disk", key)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		m := fi.Mode()
		if m&(fs.ModeSetuid|fs.ModeSetgid) != 0 {
			t.Fatalf("%s: the host copy is %v; setuid and setgid belong in Owners only", key, m)
		}
		switch {
		case m.IsRegular() && m.Perm()&0o600 != 0o600, m.IsDir() && m.Perm()&0o700 != 0o700:
			t.Fatalf("%s: mode %v is not owner read-write(-search)", key, m)
		case !m.IsRegular() && !m.IsDir() && m&fs.ModeSymlink == 0:
			t.Fatalf("%s: unexpected file type %v on the host", key, m)
		}
		st := fi.Sys().(*syscall.Stat_t)
		id := [2]uint64{uint64(st.Dev), st.Ino}
		if !seenInode[id] {
			seenInode[id] = true
			inodes++
			if m.IsRegular() {
				bytesOnDisk += fi.Size()
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for key := range tree.Owners {
		if !onDisk[key] {
			t.Fatalf("Owners has %q, which is not on disk", key)
		}
		if key != "/" && (path.Clean(key) != key || !strings.HasPrefix(key, "/")) {
			t.Fatalf("Owners key %q is not a clean absolute path", key)
		}
		if key != "/" {
			// Keyed by its real path: every parent is a real directory.
			parent := filepath.Join(tree.Dir, filepath.FromSlash(path.Dir(key)))
			if fi, err := os.Lstat(parent); err != nil || !fi.IsDir() {
				t.Fatalf("Owners key %q has a parent that is not a real directory (%v, %v)", key, fi, err)
			}
		}
		if !tree.Has(key) {
			t.Fatalf("Has(%q) is false for a key of Owners", key)
		}
		if b, err := tree.ReadFile(key); err == nil && bytes.Contains(b, []byte(fzSecret)) {
			t.Fatalf("ReadFile(%q) read the file planted outside the tree", key)
		}
	}
	if len(tree.Owners) != len(onDisk) {
		t.Fatalf("Owners has %d keys, the disk %d entries", len(tree.Owners), len(onDisk))
	}
	if tree.Bytes != bytesOnDisk || tree.Inodes != inodes {
		t.Fatalf("Tree says %d bytes in %d inodes, the disk %d in %d", tree.Bytes, tree.Inodes, bytesOnDisk, inodes)
	}
	if tree.Bytes > declared {
		t.Fatalf("Tree holds %d bytes, the layers declared %d", tree.Bytes, declared)
	}
}
