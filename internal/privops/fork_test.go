package privops

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/vmdir"
)

// parkedVM lays out a parked VM's directory as the helper leaves it.
func parkedVM(t *testing.T, p Policy, id string, layout bool) map[string][]byte {
	t.Helper()
	dir := filepath.Join(p.VMsDir, id)
	os.MkdirAll(dir, 0o711)
	files := map[string][]byte{
		vmdir.RootfsName:      bytes.Repeat([]byte("root-disk "), 102400),
		vmdir.WorkDiskName:    bytes.Repeat([]byte("work-disk "), 51200),
		vmdir.ToolsDiskName:   []byte("tools"),
		vmdir.SnapshotName:    []byte("record"),
		vmdir.SnapshotMemName: []byte("memory"),
	}
	if layout {
		files[vmdir.LayoutName] = []byte(vmdir.Layout)
	}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return files
}

// contentOf reads a disk as the VMM would: through its qcow2 chain when it
// is marked qcow2.
func contentOf(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	format, err := disk.FormatOf(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if format == disk.FormatRaw {
		b, _ := os.ReadFile(path)
		return b
	}
	out := filepath.Join(t.TempDir(), "flat")
	if b, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "raw", path, out).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert %s: %v %s", path, err, b)
	}
	b, _ := os.ReadFile(out)
	return b
}

func sameInode(t *testing.T, a, b string) bool {
	t.Helper()
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	if err1 != nil || err2 != nil {
		t.Fatalf("stat: %v %v", err1, err2)
	}
	return os.SameFile(sa, sb)
}

func TestForkDisksFreezesAndOverlays(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	p, _ := testPolicy(t)
	p.VMMKind = "banger-vmm"
	l := &Local{Policy: p}
	ctx := context.Background()
	files := parkedVM(t, p, "src", true)
	resp, err := l.ForkDisks(ctx, ForkReq{Src: "src", Children: []string{"k1", "k2"}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Method != string(disk.Overlay) {
		t.Fatalf("method %q", resp.Method)
	}
	src := filepath.Join(p.VMsDir, "src")
	for _, n := range []string{vmdir.RootfsName, vmdir.WorkDiskName} {
		frozen := filepath.Join(src, "frozen-1", n)
		fi, err := os.Stat(frozen)
		if err != nil || fi.Mode().Perm() != 0o400 {
			t.Fatalf("frozen %s: %v %v", n, err, fi)
		}
		if !bytes.Equal(contentOf(t, frozen), files[n]) {
			t.Fatalf("frozen %s differs from the disk it froze", n)
		}
		// Every VM reads the disk as it was, through its own overlay.
		for _, vm := range []string{"src", "k1", "k2"} {
			if got := contentOf(t, filepath.Join(p.VMsDir, vm, n)); !bytes.Equal(got, files[n]) {
				t.Fatalf("%s's %s reads %d bytes that differ from the frozen disk", vm, n, len(got))
			}
		}
	}
	for _, k := range []string{"k1", "k2"} {
		for _, n := range []string{vmdir.ToolsDiskName, vmdir.SnapshotName, vmdir.SnapshotMemName} {
			if !sameInode(t, filepath.Join(src, n), filepath.Join(p.VMsDir, k, n)) {
				t.Errorf("%s's %s is not the source's (a hard link)", k, n)
			}
		}
		if b, err := os.ReadFile(filepath.Join(p.VMsDir, k, vmdir.LayoutName)); err != nil || string(b) != vmdir.Layout {
			t.Errorf("%s's layout: %q %v", k, b, err)
		}
	}
	// A source parked since (a template) forks again from the same freeze.
	if _, err := l.ForkDisks(ctx, ForkReq{Src: "src", Children: []string{"k2b"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(src, "frozen-2")); err == nil {
		t.Fatal("an unchanged source was frozen again")
	}
	if got := contentOf(t, filepath.Join(p.VMsDir, "k2b", vmdir.RootfsName)); !bytes.Equal(got, files[vmdir.RootfsName]) {
		t.Fatal("a fork from the reused freeze reads a different disk")
	}
	// Once the source has run (its overlay written), a fork freezes its
	// overlay (qcow2 over qcow2).
	future := time.Now().Add(time.Hour)
	os.Chtimes(filepath.Join(src, vmdir.RootfsName), future, future)
	if _, err := l.ForkDisks(ctx, ForkReq{Src: "src", Children: []string{"k3"}}); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(filepath.Join(src, "frozen-2", vmdir.RootfsName))
	if format, _ := disk.FormatOf(f); format != disk.FormatQcow2 {
		t.Fatalf("frozen-2's root disk is %s", format)
	}
	f.Close()
	if got := contentOf(t, filepath.Join(p.VMsDir, "k3", vmdir.RootfsName)); !bytes.Equal(got, files[vmdir.RootfsName]) {
		t.Fatal("a fork of a fork reads a different disk")
	}
}

func TestForkDisksCopiesUnderFirecracker(t *testing.T) {
	p, _ := testPolicy(t)
	p.VMMKind = "firecracker"
	l := &Local{Policy: p}
	files := parkedVM(t, p, "src", true)
	resp, err := l.ForkDisks(context.Background(), ForkReq{Src: "src", Children: []string{"k1"}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Method != string(disk.Reflink) && resp.Method != string(disk.SparseCopy) {
		t.Fatalf("method %q", resp.Method)
	}
	for _, n := range []string{vmdir.RootfsName, vmdir.WorkDiskName} {
		if b, _ := os.ReadFile(filepath.Join(p.VMsDir, "k1", n)); !bytes.Equal(b, files[n]) {
			t.Errorf("k1's %s differs", n)
		}
		if sameInode(t, filepath.Join(p.VMsDir, "src", n), filepath.Join(p.VMsDir, "k1", n)) {
			t.Errorf("k1's %s is the source's own file", n)
		}
	}
	if _, err := os.Stat(filepath.Join(p.VMsDir, "src", "frozen-1")); err == nil {
		t.Error("firecracker's source was frozen (it keeps its raw disks)")
	}
}

func TestForkDisksRefusals(t *testing.T) {
	p, _ := testPolicy(t)
	p.VMMKind = "banger-vmm"
	l := &Local{Policy: p}
	ctx := context.Background()
	parkedVM(t, p, "old", false)
	parkedVM(t, p, "src", true)
	parkedVM(t, p, "taken", true)
	os.MkdirAll(filepath.Join(p.VMsDir, "bare"), 0o711)
	os.WriteFile(filepath.Join(p.VMsDir, "bare", vmdir.RootfsName), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(p.VMsDir, "bare", vmdir.LayoutName), []byte(vmdir.Layout), 0o600)
	isBadRequest(t, mustFail(l.ForkDisks(ctx, ForkReq{Src: "old", Children: []string{"k"}})), "older banger")
	isBadRequest(t, mustFail(l.ForkDisks(ctx, ForkReq{Src: "bare", Children: []string{"k"}})), "no snapshot")
	isBadRequest(t, mustFail(l.ForkDisks(ctx, ForkReq{Src: "src", Children: []string{"src"}})), "named twice")
	isBadRequest(t, mustFail(l.ForkDisks(ctx, ForkReq{Src: "src", Children: []string{"k", "k"}})), "named twice")
	isBadRequest(t, mustFail(l.ForkDisks(ctx, ForkReq{Src: "src", Children: []string{"../x"}})), "vm id")
	isBadRequest(t, mustFail(l.ForkDisks(ctx, ForkReq{Src: "src"})), "1-16")
	_, err := l.ForkDisks(ctx, ForkReq{Src: "src", Children: []string{"taken"}})
	if !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("fork into an existing directory: %v", err)
	}
	// Nothing was frozen or made by any refusal.
	for _, vm := range []string{"old", "src", "bare"} {
		if _, err := os.Stat(filepath.Join(p.VMsDir, vm, "frozen-1")); err == nil {
			t.Errorf("%s was frozen by a refused fork", vm)
		}
	}
	if _, err := os.Stat(filepath.Join(p.VMsDir, "k")); err == nil {
		t.Error("a refused fork left a directory")
	}
	if fi, _ := os.Stat(filepath.Join(p.VMsDir, "taken", vmdir.RootfsName)); fi.Sys().(*syscall.Stat_t).Nlink != 1 {
		t.Error("the existing VM's disk was touched")
	}
	if !strings.Contains(mustFail(l.ForkDisks(ctx, ForkReq{Src: "nope", Children: []string{"k"}})).Error(), "nope") {
		t.Error("a missing source is not named")
	}
}

func mustFail(_ ForkResp, err error) error { return err }
