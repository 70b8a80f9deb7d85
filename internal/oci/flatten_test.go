package oci

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func flattenStandard(t *testing.T) *Tree {
	t.Helper()
	tree, err := Flatten(context.Background(), standardLayers(t), filepath.Join(t.TempDir(), "rootfs"))
	if err != nil {
		t.Fatalf("Flatten: %v", err)
	}
	return tree
}

func TestFlatten(t *testing.T) {
	tree := flattenStandard(t)

	for _, p := range []string{"/etc/gone", "/var/lib/stuff", "/var/lib/stuff/a", "/opq/lower1", "/opq/sub", "/dev/null", "/run/fifo", "/pax_global_header"} {
		if tree.Has(p) {
			t.Errorf("%s exists, want it gone", p)
		}
		if _, ok := tree.Owners[p]; ok {
			t.Errorf("Owners has %s", p)
		}
	}
	for _, p := range []string{"/var/lib", "/opq/new", "/opq/keep-before", "/etc/via-link", "/link-to-etc", "/usr/bin/su-link", "/dev", "/" + weirdName} {
		if !tree.Has(p) {
			t.Errorf("%s missing", p)
		}
	}
	wantContent := map[string]string{
		"/etc/hostname":   "layer2\n",
		"/etc/os-release": "ID=test\n", // through the relative symlink
		"/etc/via-link":   "vl",
		"/etc/readonly":   "ro2\n",
		"/usr/bin/added":  "added",
		"/opq/new":        "n",
	}
	for p, want := range wantContent {
		got, err := tree.ReadFile(p)
		if err != nil || string(got) != want {
			t.Errorf("ReadFile(%s) = %q, %v; want %q", p, got, err, want)
		}
	}
	if target, err := os.Readlink(filepath.Join(tree.Dir, "etc/os-release")); err != nil || target != "../usr/lib/os-release" {
		t.Errorf("etc/os-release -> %q, %v", target, err)
	}

	wantOwners := map[string]Owner{
		"/":                 {0, 0, fs.ModeDir | 0o755},
		"/usr/bin/su":       {0, 0, fs.ModeSetuid | 0o755},
		"/usr/bin/su-link":  {0, 0, fs.ModeSetuid | 0o755},
		"/home/user/secret": {1000, 1000, 0o600},
		"/home/user":        {1000, 1000, fs.ModeDir | 0o700},
		"/home":             {0, 0, fs.ModeDir | 0o755}, // implicit parent
		"/tmp":              {0, 0, fs.ModeDir | fs.ModeSticky | 0o777},
		"/etc/os-release":   {0, 0, fs.ModeSymlink | 0o777},
		"/etc/readonly":     {0, 0, 0o444},
		"/" + weirdName:     {1234, 5678, 0o640},
		"/sgid":             {0, 50, fs.ModeSetgid | 0o755},
	}
	for p, want := range wantOwners {
		if got, ok := tree.Owners[p]; !ok || got != want {
			t.Errorf("Owners[%s] = %+v (%v), want %+v", p, got, ok, want)
		}
	}

	// Hardlink shares the inode.
	a, _ := os.Stat(filepath.Join(tree.Dir, "usr/bin/su"))
	b, _ := os.Stat(filepath.Join(tree.Dir, "usr/bin/su-link"))
	if !os.SameFile(a, b) {
		t.Error("usr/bin/su-link is not a hardlink of usr/bin/su")
	}
	// Host copies are never setuid and always owner-writable.
	if a.Mode()&fs.ModeSetuid != 0 {
		t.Errorf("host copy of su is setuid: %v", a.Mode())
	}
	if fi, _ := os.Stat(filepath.Join(tree.Dir, "etc/readonly")); fi.Mode().Perm()&0o200 == 0 {
		t.Errorf("host copy of etc/readonly is %v, want owner-writable", fi.Mode())
	}

	if len(tree.Skipped) != 2 || !strings.Contains(strings.Join(tree.Skipped, "\n"), "/dev/null (char device)") {
		t.Errorf("Skipped = %q", tree.Skipped)
	}

	// Every entry on disk is in Owners and vice versa; counts add up.
	var n, size int64
	seen := map[string]bool{}
	filepath.WalkDir(tree.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		key := tree.keyOf(p)
		seen[key] = true
		if _, ok := tree.Owners[key]; !ok {
			t.Errorf("%s on disk but not in Owners", key)
		}
		if key == "/usr/bin/su-link" {
			return nil
		}
		n++
		if d.Type().IsRegular() {
			fi, _ := d.Info()
			size += fi.Size()
		}
		return nil
	})
	if len(seen) != len(tree.Owners) {
		t.Errorf("Owners has %d entries, disk %d", len(tree.Owners), len(seen))
	}
	if tree.Inodes != n || tree.Bytes != size {
		t.Errorf("Inodes, Bytes = %d, %d; want %d, %d", tree.Inodes, tree.Bytes, n, size)
	}
}

func TestFlattenOpaqueOrder(t *testing.T) {
	// The opaque marker comes after this layer's own entries, some in a lower
	// directory that was not re-declared.
	l1 := tarBytes(t, file("d/old", "o", 0o644), file("d/sub/old", "o", 0o644), file("d/sub2/old", "o", 0o644))
	l2 := tarBytes(t, file("d/sub/new", "n", 0o644), file("d/.wh..wh..opq", "", 0o644), file("d/new", "n", 0o644))
	tree, err := Flatten(context.Background(), writeLayers(t, l1, l2), filepath.Join(t.TempDir(), "r"))
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{"/d/old": false, "/d/sub/old": false, "/d/sub2": false, "/d/sub/new": true, "/d/new": true} {
		if tree.Has(p) != want {
			t.Errorf("Has(%s) = %v, want %v", p, !want, want)
		}
	}
}

func TestFlattenRefusesUnsafe(t *testing.T) {
	for _, name := range []string{"../evil", "/abs", "a/../../evil", "bad\nname", `q"uote`, "ctl\x01x"} {
		dest := filepath.Join(t.TempDir(), "r")
		_, err := Flatten(context.Background(), writeLayers(t, tarBytes(t, file("ok", "", 0o644), file(name, "x", 0o644))), dest)
		if err == nil || !strings.Contains(err.Error(), "layer 1/1") || !strings.Contains(err.Error(), "unsafe path") {
			t.Errorf("%q: err = %v, want an unsafe-path error naming the layer", name, err)
			continue
		}
		if _, err := os.Stat(dest); !os.IsNotExist(err) {
			t.Errorf("%q: dest left behind after failure", name)
		}
	}
	// A hardlink out of the tree.
	_, err := Flatten(context.Background(), writeLayers(t, tarBytes(t, hardlink("x", "../../etc/shadow"))), filepath.Join(t.TempDir(), "r"))
	if err == nil || !strings.Contains(err.Error(), "unsafe path") {
		t.Errorf("hardlink escape: err = %v", err)
	}
}

func TestFlattenSymlinkParents(t *testing.T) {
	outside := t.TempDir()
	// An absolute symlink is resolved inside the tree: the file lands in
	// <Dir>/<outside>/passwd.
	l1 := tarBytes(t, symlink("etc", outside))
	l2 := tarBytes(t, file("etc/passwd", "root:x:0:0\n", 0o644))
	tree, err := Flatten(context.Background(), writeLayers(t, l1, l2), filepath.Join(t.TempDir(), "r"))
	if err != nil {
		t.Fatalf("Flatten: %v", err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("wrote outside the tree: %v", ents)
	}
	inside := filepath.Join(tree.Dir, outside, "passwd")
	if b, err := os.ReadFile(inside); err != nil || string(b) != "root:x:0:0\n" {
		t.Errorf("%s: %q, %v", inside, b, err)
	}
	if _, ok := tree.Owners[filepath.ToSlash(filepath.Join("/", outside, "passwd"))]; !ok {
		t.Errorf("Owners lacks the real path of etc/passwd")
	}
	if got, err := tree.ReadFile("etc/passwd"); err != nil || string(got) != "root:x:0:0\n" {
		t.Errorf("ReadFile(etc/passwd) = %q, %v", got, err)
	}

	// A relative symlink climbing above the root is refused.
	rel := strings.Repeat("../", 12) + strings.TrimPrefix(outside, "/")
	l1 = tarBytes(t, symlink("etc", rel))
	_, err = Flatten(context.Background(), writeLayers(t, l1, l2), filepath.Join(t.TempDir(), "r"))
	if err == nil || !strings.Contains(err.Error(), "layer 2/2") || !strings.Contains(err.Error(), "etc/passwd") {
		t.Errorf("escaping symlink parent: err = %v", err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("wrote outside the tree: %v", ents)
	}

	// A symlink loop.
	l1 = tarBytes(t, symlink("a", "b"), symlink("b", "a"))
	l2 = tarBytes(t, file("a/x", "", 0o644))
	if _, err := Flatten(context.Background(), writeLayers(t, l1, l2), filepath.Join(t.TempDir(), "r")); err == nil {
		t.Error("symlink loop: no error")
	}
}

func TestFlattenDest(t *testing.T) {
	dest := t.TempDir()
	if err := os.WriteFile(filepath.Join(dest, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Flatten(context.Background(), nil, dest); err == nil {
		t.Error("non-empty dest accepted")
	}
	empty := t.TempDir()
	tree, err := Flatten(context.Background(), nil, empty)
	if err != nil {
		t.Fatalf("empty dest: %v", err)
	}
	if tree.Inodes != 1 || len(tree.Owners) != 1 {
		t.Errorf("empty image: Inodes %d, Owners %v", tree.Inodes, tree.Owners)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Flatten(ctx, standardLayers(t), filepath.Join(t.TempDir(), "r")); err == nil {
		t.Error("cancelled context: no error")
	}
}

func TestTreeEdits(t *testing.T) {
	tree := flattenStandard(t)
	before := tree.Bytes
	if err := tree.AddFile("/etc/banger/new/file", 0o640, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if got := tree.Owners["/etc/banger"]; got != (Owner{0, 0, fs.ModeDir | 0o755}) {
		t.Errorf("created parent owner = %+v", got)
	}
	if got := tree.Owners["/etc/banger/new/file"]; got != (Owner{0, 0, 0o640}) {
		t.Errorf("file owner = %+v", got)
	}
	if tree.Bytes != before+5 {
		t.Errorf("Bytes = %d, want %d", tree.Bytes, before+5)
	}
	// Replacing a file owned by someone else makes it root's; through a
	// symlinked parent it lands at the real path.
	if err := tree.AddFile("link-to-etc/hostname", 0o644, []byte("vm\n")); err != nil {
		t.Fatal(err)
	}
	if b, _ := tree.ReadFile("/etc/hostname"); string(b) != "vm\n" {
		t.Errorf("hostname = %q", b)
	}
	if err := tree.AddFile("/usr/bin", 0o644, nil); err == nil {
		t.Error("AddFile over a directory succeeded")
	}
	if err := tree.AddFile("/", 0o644, nil); err == nil {
		t.Error("AddFile of the root succeeded")
	}
	if err := tree.AddSymlink("/sbin/init", "/lib/systemd/systemd"); err != nil {
		t.Fatal(err)
	}
	if got := tree.Owners["/sbin/init"]; got.Mode != fs.ModeSymlink|0o777 {
		t.Errorf("symlink owner = %+v", got)
	}
	if !tree.Has("sbin/init") || tree.Has("/lib/systemd/systemd") {
		t.Error("Has follows the last symlink")
	}
	// ReadFile refuses escapes and dangling links.
	if err := tree.AddSymlink("/escape", "../../../../etc/passwd"); err != nil {
		t.Fatal(err)
	}
	if _, err := tree.ReadFile("/escape"); err == nil {
		t.Error("ReadFile followed a symlink out of the tree")
	}
	if _, err := tree.ReadFile("/sbin/init"); err == nil {
		t.Error("ReadFile of a dangling link succeeded")
	}
	if _, err := tree.ReadFile("/etc"); err == nil {
		t.Error("ReadFile of a directory succeeded")
	}
}
