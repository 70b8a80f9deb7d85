package disk

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMakeOverlayIsMarkedAndBacked(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "base.ext4")
	if err := os.WriteFile(base, make([]byte, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	ov := filepath.Join(dir, "child.ext4")
	if err := MakeOverlay(context.Background(), ov, base, FormatRaw); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("qemu-img", "info", "--output=json", "-f", "qcow2", ov).Output()
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual-size"`
		Backing     string `json:"full-backing-filename"`
		BackingFmt  string `json:"backing-filename-format"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	if info.Format != "qcow2" || info.VirtualSize != 8<<20 || info.Backing != base || info.BackingFmt != "raw" {
		t.Fatalf("overlay: %+v", info)
	}
	f, err := os.Open(ov)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, err := FormatOf(f); err != nil || got != FormatQcow2 {
		t.Fatalf("FormatOf(overlay) = %q, %v", got, err)
	}
	b, _ := os.Open(base)
	defer b.Close()
	if got, err := FormatOf(b); err != nil || got != FormatRaw {
		t.Fatalf("FormatOf(base) = %q, %v", got, err)
	}
	// A name that is taken is refused, and left as it was.
	if err := MakeOverlay(context.Background(), base, ov, FormatQcow2); err == nil {
		t.Fatal("MakeOverlay over an existing file succeeded")
	}
	if st, _ := os.Stat(base); st.Size() != 8<<20 {
		t.Fatal("the existing file changed")
	}
}

func TestFormatOfRefusesUnknownMarks(t *testing.T) {
	p := filepath.Join(t.TempDir(), "d")
	if err := os.WriteFile(p, []byte("QFI\xfb"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(p)
	defer f.Close()
	// qcow2 magic in the content means nothing.
	if got, err := FormatOf(f); err != nil || got != FormatRaw {
		t.Fatalf("FormatOf(raw with qcow2 magic) = %q, %v", got, err)
	}
	if err := unix.Setxattr(p, FormatXattr, []byte("vmdk"), 0); err != nil {
		t.Skipf("no user xattrs here: %v", err)
	}
	if _, err := FormatOf(f); err == nil {
		t.Fatal("an unknown format was accepted")
	}
}
