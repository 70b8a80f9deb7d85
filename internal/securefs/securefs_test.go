package securefs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestOpenRefusesSymlinksAndEscapes(t *testing.T) {
	t.Run("openat2", testOpenRefuses)
	// Where seccomp refuses openat2 (systemd's RestrictSUIDSGID=), the
	// component walk must refuse the same.
	t.Run("walk", func(t *testing.T) {
		defer ForceComponentWalk()()
		testOpenRefuses(t)
	})
}

func testOpenRefuses(t *testing.T) {
	d := t.TempDir()
	victim := t.TempDir()
	os.WriteFile(filepath.Join(victim, "secret"), []byte("s"), 0o600)
	os.Symlink(victim, filepath.Join(d, "link"))
	os.Symlink(filepath.Join(victim, "secret"), filepath.Join(d, "flink"))
	if _, err := OpenNoFollow(filepath.Join(d, "link", "secret"), unix.O_RDONLY, 0); err == nil {
		t.Fatal("a symlinked parent was followed")
	}
	if _, err := OpenNoFollow(filepath.Join(d, "flink"), unix.O_RDONLY, 0); err == nil {
		t.Fatal("a symlinked file was followed")
	}
	dir, err := OpenNoFollow(d, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	for _, rel := range []string{"link/secret", "../" + filepath.Base(victim) + "/secret", "flink"} {
		if _, err := OpenBeneath(dir, rel, unix.O_RDONLY, 0); err == nil {
			t.Errorf("OpenBeneath(%s) escaped", rel)
		}
	}
	// Real files and directories open.
	os.MkdirAll(filepath.Join(d, "a", "b"), 0o755)
	os.WriteFile(filepath.Join(d, "a", "b", "f"), []byte("ok"), 0o644)
	if f, err := OpenNoFollow(filepath.Join(d, "a", "b", "f"), unix.O_RDONLY, 0); err != nil {
		t.Fatal(err)
	} else {
		f.Close()
	}
	if f, err := OpenBeneath(dir, "a/b/f", unix.O_RDONLY, 0); err != nil {
		t.Fatal(err)
	} else {
		f.Close()
	}
	if _, err := OpenBeneath(dir, "a/b/missing", unix.O_RDONLY, 0); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	// Removing a link removes the link, never what it points to.
	if err := RemoveBeneath(dir, "link"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(victim, "secret")); err != nil {
		t.Fatal("RemoveBeneath followed a link")
	}
}

func TestCopyTreeToAndCheckRootOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	base, _ := os.MkdirTemp("", "bgsfs")
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	src := filepath.Join(base, "src")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "sub", "f"), []byte("data"), 0o644)
	if err := CheckRootOnly(src); err != nil {
		t.Fatal(err)
	}
	owner := filepath.Join(base, "owner")
	os.MkdirAll(owner, 0o755)
	os.Chown(owner, 4248, 4248)
	if err := CheckRootOnly(filepath.Join(owner, "x")); err == nil || !strings.Contains(err.Error(), "uid 4248") {
		t.Fatalf("owner dir accepted as root-only: %v", err)
	}
	// The owner planted a link where the copy is built: it is replaced, not followed.
	victim := filepath.Join(base, "victim")
	os.MkdirAll(victim, 0o700)
	dst, err := OpenOwnedDir(owner, "a/b", 4248, 4248)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	os.Symlink(victim, filepath.Join(owner, "a", "b", ".handover-out"))
	if err := CopyTreeTo(src, dst, "out", 4248, 4248, func(out, in *os.File) error {
		b, _ := os.ReadFile(in.Name())
		_, err := out.Write(b)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	got := filepath.Join(owner, "a", "b", "out", "sub", "f")
	b, err := os.ReadFile(got)
	if err != nil || string(b) != "data" {
		t.Fatalf("copy: %q %v", b, err)
	}
	var st unix.Stat_t
	unix.Lstat(got, &st)
	if st.Uid != 4248 {
		t.Fatalf("copied file owned by %d", st.Uid)
	}
	if ents, _ := os.ReadDir(victim); len(ents) != 0 {
		t.Fatalf("the copy went through a planted link: %v", ents)
	}
}
