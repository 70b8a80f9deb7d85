package hostcheck

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestReflinkWorks: FICLONE fails on ext4 and tmpfs and works on XFS and
// btrfs; the probe leaves nothing behind and creates a missing directory.
func TestReflinkWorks(t *testing.T) {
	base := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(base, &st); err != nil {
		t.Fatal(err)
	}
	var want bool
	switch st.Type {
	case unix.EXT4_SUPER_MAGIC, unix.TMPFS_MAGIC:
		want = false
	case unix.XFS_SUPER_MAGIC, unix.BTRFS_SUPER_MAGIC:
		want = true
	default:
		t.Skipf("%s: filesystem type %#x is neither ext4, tmpfs, XFS nor btrfs", base, st.Type)
	}
	dir := filepath.Join(base, "vms")
	got, err := ReflinkWorks(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("reflink on %#x: %v, want %v", st.Type, got, want)
	}
	left, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Fatalf("the probe left %v behind", left)
	}
}

func TestReflinkWorksOnTmpfs(t *testing.T) {
	var st unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		t.Skip("no tmpfs at /dev/shm")
	}
	dir, err := os.MkdirTemp("/dev/shm", "hostcheck-")
	if err != nil {
		t.Skip(err)
	}
	defer os.RemoveAll(dir)
	if ok, err := ReflinkWorks(dir); err != nil || ok {
		t.Fatalf("tmpfs: %v, %v; want false, nil", ok, err)
	}
}

func TestReflinkWorksCannotProbe(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReflinkWorks(filepath.Join(file, "vms")); err == nil {
		t.Fatal("a directory under a regular file was probed")
	}
}
