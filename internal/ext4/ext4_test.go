package ext4

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func needE2fsprogs(t *testing.T) {
	t.Helper()
	if err := Check(); err != nil {
		t.Skip(err)
	}
}

// testTree writes a small tree: files with odd modes, a directory, a
// fast and a slow symlink. It returns the tree and the owners it should
// have in the image.
func testTree(t *testing.T) (string, map[string]Owner) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tree")
	slow := "/" + strings.Repeat("long/", 20) + "target"
	for _, e := range []struct {
		name, data string
		mode       fs.FileMode
	}{
		{"etc", "", fs.ModeDir | 0o755},
		{"etc/shadow", "root:*:\n", 0o640},
		{"usr/bin", "", fs.ModeDir | 0o755},
		{"usr/bin/su", "#!/bin/sh\n", 0o4755},
		{"usr/bin/wall", "#!/bin/sh\n", 0o2711},
		{"tmp", "", fs.ModeDir | 0o1777},
		{"home/dev", "", fs.ModeDir | 0o700},
		{"home/dev/notes with space", "hello\n", 0o400},
	} {
		p := filepath.Join(dir, e.name)
		if e.mode.IsDir() {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		} else if err := os.WriteFile(p, []byte(e.data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../usr/bin/su", filepath.Join(dir, "etc/su-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(slow, filepath.Join(dir, "etc/slow-link")); err != nil {
		t.Fatal(err)
	}
	owners := map[string]Owner{
		"/":                          {Mode: fs.ModeDir | 0o755},
		"/etc":                       {Mode: fs.ModeDir | 0o755},
		"/etc/shadow":                {UID: 0, GID: 42, Mode: 0o640},
		"/etc/su-link":               {Mode: fs.ModeSymlink | 0o777},
		"/etc/slow-link":             {Mode: fs.ModeSymlink | 0o777},
		"/usr":                       {Mode: fs.ModeDir | 0o755},
		"/usr/bin":                   {Mode: fs.ModeDir | 0o755},
		"/usr/bin/su":                {Mode: 0o755 | fs.ModeSetuid},
		"/usr/bin/wall":              {GID: 5, Mode: 0o711 | fs.ModeSetgid},
		"/tmp":                       {Mode: fs.ModeDir | 0o777 | fs.ModeSticky},
		"/home":                      {Mode: fs.ModeDir | 0o755},
		"/home/dev":                  {UID: 1000, GID: 1000, Mode: fs.ModeDir | 0o700},
		"/home/dev/notes with space": {UID: 1000, GID: 1000, Mode: 0o400},
	}
	return dir, owners
}

func TestMakeSetOwnersRead(t *testing.T) {
	needE2fsprogs(t)
	ctx := context.Background()
	dir, owners := testTree(t)
	img := filepath.Join(t.TempDir(), "root.ext4")
	if err := Make(ctx, img, dir, MkfsOptions{Label: "banger-test", BlockSize: 4096, InodeSize: 256, Inodes: 4096, Size: "16M"}); err != nil {
		t.Fatalf("Make: %v", err)
	}
	if err := SetOwners(ctx, img, dir, owners); err != nil {
		t.Fatalf("SetOwners: %v", err)
	}
	for p, want := range owners {
		in, err := Stat(ctx, img, p)
		if err != nil {
			t.Fatalf("Stat %s: %v", p, err)
		}
		if in.UID != want.UID || in.GID != want.GID || in.Mode != want.Mode {
			t.Errorf("%s: %d:%d %v, want %d:%d %v", p, in.UID, in.GID, in.Mode, want.UID, want.GID, want.Mode)
		}
	}
	if in, _ := Stat(ctx, img, "/etc/su-link"); in.Type != "symlink" || in.Target != "../usr/bin/su" {
		t.Errorf("fast symlink: %+v", in)
	}
	slow, _ := os.Readlink(filepath.Join(dir, "etc/slow-link"))
	if in, _ := Stat(ctx, img, "/etc/slow-link"); in.Target != slow {
		t.Errorf("slow symlink: %+v, want target %q", in, slow)
	}
	if in, _ := Stat(ctx, img, "/etc/shadow"); in.Type != "regular" || in.Size != 8 || in.Links != 1 {
		t.Errorf("/etc/shadow: %+v", in)
	}

	if b, err := ReadFile(ctx, img, "/home/dev/notes with space"); err != nil || string(b) != "hello\n" {
		t.Errorf("ReadFile: %q %v", b, err)
	}
	out := t.TempDir()
	if err := Dump(ctx, img, "/usr/bin/su", filepath.Join(out, "su")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "su")); string(b) != "#!/bin/sh\n" {
		t.Errorf("Dump wrote %q", b)
	}
	if err := Rdump(ctx, img, "/home", out); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "home/dev/notes with space")); string(b) != "hello\n" {
		t.Errorf("Rdump wrote %q", b)
	}
	if err := Rdump(ctx, img, "/etc", out); err != nil {
		t.Fatal(err)
	}
	if l, _ := os.Readlink(filepath.Join(out, "etc/su-link")); l != "../usr/bin/su" {
		t.Errorf("Rdump symlink -> %q", l)
	}
}

func TestReadErrors(t *testing.T) {
	needE2fsprogs(t)
	ctx := context.Background()
	dir := t.TempDir()
	img := filepath.Join(dir, "empty.ext4")
	if err := Make(ctx, img, "", MkfsOptions{Lazy: true, Size: "8M"}); err != nil {
		t.Fatal(err)
	}
	if in, err := Stat(ctx, img, "/"); err != nil || in.Mode != fs.ModeDir|0o755 || in.UID != 0 {
		t.Errorf("root of an empty image: %+v %v", in, err)
	}
	for name, err := range map[string]error{
		"ReadFile": func() error { _, err := ReadFile(ctx, img, "/nope"); return err }(),
		"Stat":     func() error { _, err := Stat(ctx, img, "/nope"); return err }(),
		"Dump":     Dump(ctx, img, "/nope", filepath.Join(dir, "x")),
		"Rdump":    Rdump(ctx, img, "/nope", dir),
	} {
		if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "/nope in "+img) {
			t.Errorf("%s of a missing path: %v", name, err)
		}
	}
	if _, err := ReadFile(ctx, filepath.Join(dir, "missing.ext4"), "/x"); err == nil || errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "while trying to open") {
		t.Errorf("ReadFile of a missing image: %v", err)
	}
	if _, err := ReadFile(ctx, img, `/a"b`); err == nil || !strings.Contains(err.Error(), "unsafe path") {
		t.Errorf("a quote in a path: %v", err)
	}
}

func TestMakeOutOfSpace(t *testing.T) {
	needE2fsprogs(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "big"), bytes.Repeat([]byte{1}, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "small.ext4")
	err := Make(context.Background(), img, dir, MkfsOptions{Size: "4M"})
	if err == nil || !OutOfSpace(err) || !strings.Contains(err.Error(), "mkfs.ext4 -q -F") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("Make of a tree too big: %v (out of space: %v)", err, OutOfSpace(err))
	}
	if OutOfSpace(errors.New("no space")) {
		t.Error("OutOfSpace of an error that is not mkfs's")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Make(ctx, img, "", MkfsOptions{Size: "4M"}); !errors.Is(err, context.Canceled) || OutOfSpace(err) {
		t.Errorf("Make with a cancelled context: %v", err)
	}
}

func TestSetOwnersRefuses(t *testing.T) {
	dir := t.TempDir()
	for _, owners := range []map[string]Owner{
		{"/": {UID: -1}},
		{"/": {GID: 1 << 32}},
		{"/bad\"name": {}},
		{"/missing": {}},
	} {
		if _, err := ownerScript(dir, owners); err == nil {
			t.Errorf("ownerScript(%v) accepted", owners)
		}
	}
	// The root is always set; an entry whose host copy already matches is not.
	os.WriteFile(filepath.Join(dir, "f"), nil, 0o644)
	st, _ := os.Lstat(filepath.Join(dir, "f"))
	uid, gid := owner(st)
	script, err := ownerScript(dir, map[string]Owner{"/": {Mode: fs.ModeDir | 0o755}, "/f": {UID: uid, GID: gid, Mode: 0o644}})
	if err != nil || string(script) != "sif \"/\" uid 0\nsif \"/\" gid 0\nsif \"/\" mode 040755\n" {
		t.Errorf("script %q %v", script, err)
	}
}

func TestModes(t *testing.T) {
	for in, want := range map[uint32]fs.FileMode{0o644: 0o644, 0o4755: 0o755 | fs.ModeSetuid, 0o2711: 0o711 | fs.ModeSetgid, 0o1777: 0o777 | fs.ModeSticky, 0o7000: fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky} {
		if got := FileMode(in); got != want {
			t.Errorf("FileMode(%o) = %v, want %v", in, got, want)
		}
		if got := UnixMode(want | fs.ModeDir); got != in {
			t.Errorf("UnixMode(%v) = %o, want %o", want, got, in)
		}
	}
}

func owner(fi fs.FileInfo) (uid, gid int) {
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid)
}
