package guestbuild

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// testELF builds a minimal x86-64 ELF executable: one PT_LOAD, one PT_NOTE
// holding a decoy note and, if pvh, the Xen PHYS32_ENTRY note.
func testELF(pvh bool, entry uint64) []byte {
	le := binary.LittleEndian
	var notes bytes.Buffer
	note := func(name string, typ uint32, desc []byte) {
		n := append([]byte(name), 0)
		binary.Write(&notes, le, uint32(len(n)))
		binary.Write(&notes, le, uint32(len(desc)))
		binary.Write(&notes, le, typ)
		notes.Write(n)
		notes.Write(make([]byte, (4-len(n)%4)%4))
		notes.Write(desc)
		notes.Write(make([]byte, (4-len(desc)%4)%4))
	}
	note("Xen", 6, []byte("linux\x00"))
	if pvh {
		d := make([]byte, 8)
		le.PutUint64(d, entry)
		note("Xen", xenElfnotePhys32Entry, d)
	}
	const ehsize, phsize = 64, 56
	noteOff := uint64(ehsize + 2*phsize)
	total := noteOff + uint64(notes.Len()) + 64 // 64 bytes of "code"
	var b bytes.Buffer
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	binary.Write(&b, le, uint16(elf.ET_EXEC))
	binary.Write(&b, le, uint16(elf.EM_X86_64))
	binary.Write(&b, le, uint32(1))
	binary.Write(&b, le, uint64(0x1000000)) // e_entry
	binary.Write(&b, le, uint64(ehsize))    // e_phoff
	binary.Write(&b, le, uint64(0))         // e_shoff
	binary.Write(&b, le, uint32(0))         // e_flags
	binary.Write(&b, le, uint16(ehsize))
	binary.Write(&b, le, uint16(phsize))
	binary.Write(&b, le, uint16(2))
	binary.Write(&b, le, uint16(64))
	binary.Write(&b, le, uint16(0))
	binary.Write(&b, le, uint16(0))
	ph := func(typ, flags uint32, off, addr, size, align uint64) {
		binary.Write(&b, le, typ)
		binary.Write(&b, le, flags)
		binary.Write(&b, le, off)
		binary.Write(&b, le, addr)
		binary.Write(&b, le, addr)
		binary.Write(&b, le, size)
		binary.Write(&b, le, size)
		binary.Write(&b, le, align)
	}
	ph(uint32(elf.PT_LOAD), 5, 0, 0x1000000, total, 0x1000)
	ph(uint32(elf.PT_NOTE), 4, noteOff, 0x1000000+noteOff, uint64(notes.Len()), 4)
	b.Write(notes.Bytes())
	b.Write(bytes.Repeat([]byte{0x90}, 64))
	return b.Bytes()
}

// lz4LiteralFrame encodes data as an LZ4 legacy frame of literal-only blocks
// with the kernel's 4-byte size trailer.
func lz4LiteralFrame(data []byte) []byte {
	var f bytes.Buffer
	binary.Write(&f, binary.LittleEndian, uint32(lz4LegacyMagic))
	for rest := data; len(rest) > 0; {
		n := min(len(rest), lz4LegacyMaxBlock)
		var blk bytes.Buffer
		blk.WriteByte(0xf0)
		for l := n - 15; ; l -= 255 {
			if l < 255 {
				blk.WriteByte(byte(l))
				break
			}
			blk.WriteByte(255)
		}
		blk.Write(rest[:n])
		binary.Write(&f, binary.LittleEndian, uint32(blk.Len()))
		f.Write(blk.Bytes())
		rest = rest[n:]
	}
	binary.Write(&f, binary.LittleEndian, uint32(len(data)))
	return f.Bytes()
}

// testBzImage wraps a compressed payload in a minimal boot-protocol header.
func testBzImage(payload []byte) []byte {
	const setupSects = 1
	const pad = 0x10
	bz := make([]byte, (setupSects+1)*512+pad)
	bz[bzSetupSects] = setupSects
	copy(bz[bzHeaderMagic:], "HdrS")
	binary.LittleEndian.PutUint16(bz[bzVersion:], 0x20f)
	binary.LittleEndian.PutUint32(bz[bzPayloadOffset:], pad)
	binary.LittleEndian.PutUint32(bz[bzPayloadLength:], uint32(len(payload)))
	bz = append(bz, payload...)
	return append(bz, []byte("trailing setup data")...)
}

func TestLZ4Block(t *testing.T) {
	// "abc", then a 9-byte match at offset 3 (overlapping), then literal "x".
	blk := []byte{0x35, 'a', 'b', 'c', 3, 0, 0x10, 'x'}
	out, err := lz4Block(nil, blk)
	if err != nil || string(out) != "abcabcabcabcx" {
		t.Fatalf("lz4Block = %q, %v", out, err)
	}
	// Non-overlapping match with an extended match length (15+3+4 = 22).
	blk = []byte{0x4f, 'w', 'x', 'y', 'z', 4, 0, 3, 0x10, '!'}
	out, err = lz4Block(nil, blk)
	if want := "wxyz" + strings.Repeat("wxyz", 5) + "wx" + "!"; err != nil || string(out) != want {
		t.Fatalf("lz4Block = %q, %v; want %q", out, err, want)
	}
	for name, bad := range map[string][]byte{
		"offset 0":        {0x10, 'a', 0, 0, 0x00},
		"offset too far":  {0x10, 'a', 2, 0, 0x00},
		"literals past":   {0x50, 'a'},
		"truncated token": {},
	} {
		if _, err := lz4Block(nil, bad); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), (lz4LegacyMaxBlock+1000)/16) // two blocks
	got, err := decompressLZ4Legacy(lz4LiteralFrame(data))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("legacy frame round trip: %d bytes, %v", len(got), err)
	}
	bad := lz4LiteralFrame([]byte("hello world, hello world"))
	binary.LittleEndian.PutUint32(bad[len(bad)-4:], 7)
	if _, err := decompressLZ4Legacy(bad); err == nil {
		t.Error("a wrong size trailer was accepted")
	}
}

func TestExtractVmlinuxSynthetic(t *testing.T) {
	const entry = 0x1000850
	vmlinux := testELF(true, entry)
	relocs := bytes.Repeat([]byte{0xee}, 300) // x86 appends relocations after the ELF
	raw := append(append([]byte(nil), vmlinux...), relocs...)

	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()
	gz.Write([]byte{1, 2, 3, 4}) // size trailer after the gzip member
	zenc, _ := zstd.NewWriter(nil)
	zs := zenc.EncodeAll(raw, nil)
	var xzb bytes.Buffer
	xw, _ := xz.NewWriter(&xzb)
	xw.Write(raw)
	xw.Close()

	for _, c := range []struct {
		name    string
		payload []byte
	}{
		{CompressGzip, gz.Bytes()},
		{CompressZstd, zs},
		{CompressXZ, xzb.Bytes()},
		{CompressLZ4, lz4LiteralFrame(raw)},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, comp, err := ExtractVmlinux(context.Background(), testBzImage(c.payload))
			if err != nil {
				t.Fatal(err)
			}
			if comp != c.name {
				t.Errorf("compression = %s", comp)
			}
			if !bytes.Equal(got, vmlinux) {
				t.Errorf("got %d bytes, want the %d-byte ELF without the trailing relocs", len(got), len(vmlinux))
			}
			if e, err := PVHEntry(got); err != nil || e != entry {
				t.Errorf("PVHEntry = %#x, %v", e, err)
			}
		})
	}
	if _, err := PVHEntry(testELF(false, 0)); err == nil || !strings.Contains(err.Error(), "PVH") {
		t.Errorf("ELF without the note: err = %v", err)
	}
	if _, _, err := ExtractVmlinux(context.Background(), []byte("not a kernel")); err == nil {
		t.Error("garbage accepted as bzImage")
	}
	if _, _, err := ExtractVmlinux(context.Background(), testBzImage(lz4LiteralFrame([]byte("no ELF here, sorry")))); err == nil {
		t.Error("non-ELF payload accepted")
	}
}

// testCacheDir is where tests find (and the integration test builds) guest
// artifacts: $BANGER_TEST_CACHE, else /var/cache/banger-test.
func testCacheDir() string {
	if d := os.Getenv("BANGER_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/banger-test"
}

// realVmlinuz finds a Debian cloud kernel bzImage: $BANGER_KERNEL_DEB, a
// published build or a cached .deb in the test cache.
func realVmlinuz(t *testing.T) []byte {
	t.Helper()
	debs := []string{os.Getenv(KernelDebEnv)}
	root := filepath.Join(testCacheDir(), "guest")
	if a, err := newestPublished(root); err == nil && os.Getenv(KernelDebEnv) == "" {
		if b, err := os.ReadFile(a.Vmlinuz); err == nil {
			return b
		}
	}
	ms, _ := filepath.Glob(filepath.Join(root, "debs", "linux-image-*.deb"))
	debs = append(debs, ms...)
	for _, deb := range debs {
		if deb == "" {
			continue
		}
		dir := t.TempDir()
		cmd := exec.Command("sh", "-c", `dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards './boot/vmlinuz-*'`, "sh", deb, dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Logf("%s: %v %s", deb, err, out)
			continue
		}
		ms, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
		if len(ms) == 1 {
			b, err := os.ReadFile(ms[0])
			if err == nil {
				return b
			}
		}
	}
	t.Skipf("no Debian kernel: set %s or build into %s first (go test -run TestBootGuest)", KernelDebEnv, testCacheDir())
	return nil
}

// TestExtractVmlinuxReal runs the extraction on the real Debian kernel.
func TestExtractVmlinuxReal(t *testing.T) {
	bz := realVmlinuz(t)
	start := time.Now()
	vmlinux, comp, err := ExtractVmlinux(context.Background(), bz)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d-byte bzImage: %s payload -> %d-byte ELF in %v", len(bz), comp, len(vmlinux), time.Since(start))
	entry, err := PVHEntry(vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.NewFile(bytes.NewReader(vmlinux))
	if err != nil {
		t.Fatal(err)
	}
	inLoad := false
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && entry >= p.Paddr && entry < p.Paddr+p.Memsz {
			inLoad = true
		}
	}
	if !inLoad {
		t.Errorf("PVH entry %#x is outside every PT_LOAD segment", entry)
	}
	t.Logf("PVH entry %#x, ELF entry %#x, %d program headers", entry, f.Entry, len(f.Progs))
}
