package guestbuild

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// cpioEntry is one parsed newc entry (test-only reader).
type cpioEntry struct {
	Name         string
	Mode         uint32
	Size         int
	RMaj, RMin   uint32
	Ino, NLink   uint32
	Data         []byte
	HeaderOffset int
}

// readNewc parses a newc archive up to TRAILER!!!, checking magic and the
// 4-byte alignment of names and data.
func readNewc(b []byte) ([]cpioEntry, error) {
	var out []cpioEntry
	off := 0
	for {
		if off%4 != 0 {
			return nil, fmt.Errorf("entry at %d not 4-aligned", off)
		}
		if len(b)-off < 110 {
			return nil, fmt.Errorf("truncated header at %d", off)
		}
		h := b[off : off+110]
		if string(h[:6]) != "070701" {
			return nil, fmt.Errorf("bad magic %q at %d", h[:6], off)
		}
		f := func(i int) uint32 {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				panic(err)
			}
			return uint32(v)
		}
		e := cpioEntry{Ino: f(0), Mode: f(1), NLink: f(4), Size: int(f(6)), RMaj: f(9), RMin: f(10), HeaderOffset: off}
		namesize := int(f(11))
		p := off + 110
		if p+namesize > len(b) || b[p+namesize-1] != 0 {
			return nil, fmt.Errorf("bad name at %d", off)
		}
		e.Name = string(b[p : p+namesize-1])
		p += namesize
		p = (p + 3) &^ 3
		if p+e.Size > len(b) {
			return nil, fmt.Errorf("%s: data past the end", e.Name)
		}
		e.Data = b[p : p+e.Size]
		p += e.Size
		off = (p + 3) &^ 3
		if e.Name == "TRAILER!!!" {
			if off != len(b) {
				return nil, fmt.Errorf("%d bytes after the trailer", len(b)-off)
			}
			return out, nil
		}
		out = append(out, e)
	}
}

func TestCpioWriterRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	c := NewCpioWriter(&buf)
	c.Dir("bin", 0o755)
	c.File("bin/hello", 0o755, []byte("#!/bin/sh\necho hi\n"))
	c.File("/etc/odd", 0o600, []byte("x"))       // 1 byte: needs padding
	c.File("empty", 0o644, nil)                  // 0 bytes
	c.File("./a/../four", 0o644, []byte("1234")) // cleaned name
	c.Symlink("bin/sh", "/bin/busybox")
	c.CharDev("console", 0o600, 5, 1)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	ents, err := readNewc(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		name string
		mode uint32
		data string
	}{
		{"bin", cpioIFDIR | 0o755, ""},
		{"bin/hello", cpioIFREG | 0o755, "#!/bin/sh\necho hi\n"},
		{"etc/odd", cpioIFREG | 0o600, "x"},
		{"empty", cpioIFREG | 0o644, ""},
		{"four", cpioIFREG | 0o644, "1234"},
		{"bin/sh", cpioIFLNK | 0o777, "/bin/busybox"},
		{"console", cpioIFCHR | 0o600, ""},
	}
	if len(ents) != len(want) {
		t.Fatalf("got %d entries, want %d", len(ents), len(want))
	}
	inos := map[uint32]bool{}
	for i, w := range want {
		e := ents[i]
		if e.Name != w.name || e.Mode != w.mode || string(e.Data) != w.data {
			t.Errorf("entry %d = %q %o %q, want %q %o %q", i, e.Name, e.Mode, e.Data, w.name, w.mode, w.data)
		}
		if inos[e.Ino] {
			t.Errorf("%s reuses inode %d", e.Name, e.Ino)
		}
		inos[e.Ino] = true
	}
	if e := ents[6]; e.RMaj != 5 || e.RMin != 1 {
		t.Errorf("console rdev = %d:%d, want 5:1", e.RMaj, e.RMin)
	}
	// Deterministic: the same input gives the same bytes.
	var again bytes.Buffer
	c2 := NewCpioWriter(&again)
	c2.Dir("x", 0o755)
	c2.Close()
	var again2 bytes.Buffer
	c3 := NewCpioWriter(&again2)
	c3.Dir("x", 0o755)
	c3.Close()
	if !bytes.Equal(again.Bytes(), again2.Bytes()) {
		t.Error("output is not deterministic")
	}
	if err := NewCpioWriter(io.Discard).File("TRAILER!!!", 0o644, nil); err == nil {
		t.Error("a TRAILER!!! entry was accepted")
	}
}

// TestCpioWriterWithCpioTool reads a gzip'd archive back with GNU cpio.
func TestCpioWriterWithCpioTool(t *testing.T) {
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("cpio not installed")
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	c := NewCpioWriter(zw)
	c.Dir("d", 0o755)
	c.Dir("d/e", 0o700)
	c.File("d/e/f.txt", 0o644, []byte("hello cpio\n"))
	c.File("d/big", 0o600, bytes.Repeat([]byte{0xab}, 70001))
	c.Symlink("d/link", "e/f.txt")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	zw.Close()
	dir := t.TempDir()
	gz := filepath.Join(dir, "a.cpio.gz")
	os.WriteFile(gz, buf.Bytes(), 0o644)

	list := exec.Command("sh", "-c", "gzip -dc "+gz+" | "+cpio+" -t --quiet")
	out, err := list.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	if got, want := strings.Fields(string(out)), []string{"d", "d/e", "d/e/f.txt", "d/big", "d/link"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("cpio -t = %v, want %v", got, want)
	}
	x := filepath.Join(dir, "x")
	os.Mkdir(x, 0o755)
	extract := exec.Command("sh", "-c", "gzip -dc "+gz+" | "+cpio+" -id --quiet --no-absolute-filenames")
	extract.Dir = x
	if out, err := extract.CombinedOutput(); err != nil {
		t.Fatalf("cpio -id: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(filepath.Join(x, "d/e/f.txt")); string(b) != "hello cpio\n" {
		t.Errorf("f.txt = %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(x, "d/big")); len(b) != 70001 || b[70000] != 0xab {
		t.Errorf("big has %d bytes", len(b))
	}
	if l, _ := os.Readlink(filepath.Join(x, "d/link")); l != "e/f.txt" {
		t.Errorf("link -> %q", l)
	}
	if st, _ := os.Stat(filepath.Join(x, "d/e")); st == nil || st.Mode().Perm() != 0o700 {
		t.Errorf("d/e mode = %v", st)
	}
}
