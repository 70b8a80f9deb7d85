package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// entries lists dir's names, so a test sees any temporary file left behind.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

func TestWriteFileReplacesWithModeWhateverTheUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(p)
	if err := WriteFile(p, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	fi, _ := os.Stat(p)
	if err != nil || string(b) != "new" || fi.Mode().Perm() != 0o644 {
		t.Fatalf("after WriteFile: %q %v %v", b, fi.Mode(), err)
	}
	if os.SameFile(before, fi) {
		t.Error("WriteFile wrote in place; it must rename a new file over the old")
	}
	if n := entries(t, dir); len(n) != 1 || n[0] != "f" {
		t.Errorf("directory holds %v, want only f", n)
	}
}

func TestWriteFileFailureLeavesTargetAndNoTemp(t *testing.T) {
	dir := t.TempDir()
	// The target is a non-empty directory: the rename fails after the
	// temporary file was written.
	p := filepath.Join(dir, "d")
	if err := os.MkdirAll(filepath.Join(p, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := WriteFile(p, []byte("new"), 0o644)
	if err == nil || !strings.Contains(err.Error(), "rename") {
		t.Fatalf("err = %v, want a rename error", err)
	}
	if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
		t.Fatalf("target changed: %v %v", fi, err)
	}
	if n := entries(t, dir); len(n) != 1 || n[0] != "d" {
		t.Errorf("directory holds %v after a failed write", n)
	}
	if err := WriteFile(filepath.Join(dir, "missing", "f"), nil, 0o644); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing directory: err = %v", err)
	}
}

func TestWriteFileAtRefusesPaths(t *testing.T) {
	d, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, name := range []string{"", ".", "..", "a/b"} {
		if err := WriteFileAt(d, name, nil, 0o644); err == nil {
			t.Errorf("WriteFileAt(%q) succeeded", name)
		}
	}
	if err := WriteFileAt(d, "ok", []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(d.Name(), "ok")); err != nil || string(b) != "x" {
		t.Fatalf("%q %v", b, err)
	}
}

func TestKeepRestoreRemovePrevious(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bin")
	if err := os.WriteFile(p, []byte("v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A stale .previous from an earlier run is replaced.
	if err := os.WriteFile(p+PreviousSuffix, []byte("v0"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := KeepPrevious(p); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, []byte("v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p + ".previous"); string(b) != "v1" {
		t.Fatalf(".previous holds %q, want v1", b)
	}
	if err := RestorePrevious(p); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "v1" {
		t.Fatalf("restored %q, want v1", b)
	}
	err := RestorePrevious(p)
	if !errors.Is(err, fs.ErrNotExist) || err.Error() != "restore "+p+" from "+p+".previous: rename "+p+".previous "+p+": no such file or directory" {
		t.Fatalf("restore without .previous: %v", err)
	}
	if err := KeepPrevious(filepath.Join(dir, "absent")); err == nil || !strings.HasPrefix(err.Error(), "keep "+filepath.Join(dir, "absent.previous")+": ") {
		t.Fatalf("keep of an absent file: %v", err)
	}
	if err := KeepPrevious(p); err != nil {
		t.Fatal(err)
	}
	if err := RemovePrevious(p); err != nil {
		t.Fatal(err)
	}
	if err := RemovePrevious(p); err != nil {
		t.Fatalf("second RemovePrevious: %v", err)
	}
	if n := entries(t, dir); len(n) != 1 || n[0] != "bin" {
		t.Errorf("directory holds %v", n)
	}
}
