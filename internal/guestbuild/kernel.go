package guestbuild

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/banger-dev/banger/internal/sysexec"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// Offsets in the x86 boot protocol header ("HdrS"), see
// Documentation/arch/x86/boot.rst.
const (
	bzSetupSects    = 0x1f1
	bzHeaderMagic   = 0x202
	bzVersion       = 0x206
	bzPayloadOffset = 0x248
	bzPayloadLength = 0x24c
)

// XEN_ELFNOTE_PHYS32_ENTRY: the PVH entry point note, owner "Xen".
const xenElfnotePhys32Entry = 18

// Compression names returned by ExtractVmlinux.
const (
	CompressGzip  = "gzip"
	CompressXZ    = "xz"
	CompressZstd  = "zstd"
	CompressLZ4   = "lz4"
	CompressBzip2 = "bzip2"
	CompressLZMA  = "lzma"
)

// BzPayload locates the compressed kernel inside a bzImage (boot protocol
// 2.08+) and names its compression from the payload's magic bytes.
func BzPayload(bz []byte) (payload []byte, compression string, err error) {
	if len(bz) < 0x250 || string(bz[bzHeaderMagic:bzHeaderMagic+4]) != "HdrS" {
		return nil, "", errors.New("not a bzImage (no HdrS header)")
	}
	if v := binary.LittleEndian.Uint16(bz[bzVersion:]); v < 0x208 {
		return nil, "", fmt.Errorf("boot protocol %#x has no payload fields (need 2.08+)", v)
	}
	setup := int(bz[bzSetupSects])
	if setup == 0 {
		setup = 4
	}
	start := int64(setup+1)*512 + int64(binary.LittleEndian.Uint32(bz[bzPayloadOffset:]))
	n := int64(binary.LittleEndian.Uint32(bz[bzPayloadLength:]))
	if n == 0 || start+n > int64(len(bz)) {
		return nil, "", fmt.Errorf("payload %d+%d outside the %d-byte bzImage", start, n, len(bz))
	}
	p := bz[start : start+n]
	switch {
	case bytes.HasPrefix(p, []byte{0x1f, 0x8b}):
		compression = CompressGzip
	case bytes.HasPrefix(p, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		compression = CompressXZ
	case bytes.HasPrefix(p, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		compression = CompressZstd
	case bytes.HasPrefix(p, []byte{0x02, 0x21, 0x4c, 0x18}):
		compression = CompressLZ4
	case bytes.HasPrefix(p, []byte("BZh")):
		compression = CompressBzip2
	case bytes.HasPrefix(p, []byte{0x5d, 0, 0}):
		compression = CompressLZMA
	case bytes.HasPrefix(p, []byte{0x89, 'L', 'Z', 'O'}):
		return nil, "lzo", errors.New("kernel payload is LZO compressed, which is not supported")
	default:
		return nil, "", fmt.Errorf("unknown kernel payload compression (magic % x)", p[:min(6, len(p))])
	}
	return p, compression, nil
}

// ExtractVmlinux returns the uncompressed ELF kernel (vmlinux) inside a
// bzImage, trimmed to the ELF proper (x86 appends relocation data), and the
// compression it found. It does not check for the PVH note; see PVHEntry.
func ExtractVmlinux(ctx context.Context, bz []byte) (vmlinux []byte, compression string, err error) {
	p, compression, err := BzPayload(bz)
	if err != nil {
		return nil, compression, err
	}
	var out []byte
	switch compression {
	case CompressGzip:
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(bytes.NewReader(p)); err == nil {
			zr.Multistream(false)
			out, err = io.ReadAll(zr)
		}
	case CompressXZ:
		out, err = unxz(ctx, p)
	case CompressZstd:
		var d *zstd.Decoder
		if d, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<31)); err == nil {
			out, err = d.DecodeAll(p, nil)
			d.Close()
		}
	case CompressLZ4:
		out, err = decompressLZ4Legacy(p)
	case CompressBzip2:
		out, err = io.ReadAll(bzip2.NewReader(bytes.NewReader(p)))
	case CompressLZMA:
		var r *lzma.Reader
		if r, err = lzma.NewReader(bytes.NewReader(p)); err == nil {
			out, err = io.ReadAll(r)
		}
	}
	if err != nil && len(out) == 0 {
		return nil, compression, fmt.Errorf("decompressing the %s kernel payload: %w", compression, err)
	}
	// Trailing bytes after the compressed stream (the kernel's size trailer)
	// may make a decoder complain after it produced everything: the ELF
	// checks below decide.
	elfData, err := trimELF(out)
	if err != nil {
		return nil, compression, fmt.Errorf("decompressed %s kernel payload: %w", compression, err)
	}
	return elfData, compression, nil
}

// unxz decodes an xz stream. Kernel payloads use the x86 BCJ filter, which
// github.com/ulikunitz/xz does not implement; then the host's xz is used.
func unxz(ctx context.Context, p []byte) ([]byte, error) {
	if r, err := xz.NewReader(bytes.NewReader(p)); err == nil {
		if out, err := io.ReadAll(r); err == nil || len(out) > 0 {
			return out, nil
		}
	}
	path, err := sysexec.LookPath("xz")
	if err != nil {
		return nil, errors.New("xz payload with a BCJ filter needs the xz tool (apt-get install xz-utils)")
	}
	res, err := runner.Run(ctx, sysexec.Cmd{Path: path, Args: []string{"-dc", "--single-stream"}, Stdin: bytes.NewReader(p)})
	if len(res.Stdout) == 0 && err != nil {
		return nil, err
	}
	return res.Stdout, nil
}

// trimELF checks that data starts with a 64-bit x86 ELF executable and cuts
// it after the last byte the headers refer to.
func trimELF(data []byte) ([]byte, error) {
	if !bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
		return nil, errors.New("not an ELF file")
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("bad ELF: %w", err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		return nil, fmt.Errorf("ELF is %v %v %v, want ELFCLASS64 EM_X86_64 ET_EXEC", f.Class, f.Machine, f.Type)
	}
	var hdr struct {
		Phoff     uint64
		Shoff     uint64
		Phentsize uint16
		Phnum     uint16
		Shentsize uint16
		Shnum     uint16
	}
	// ELF64 header: e_phoff @0x20, e_shoff @0x28, e_phentsize @0x36,
	// e_phnum @0x38, e_shentsize @0x3a, e_shnum @0x3c.
	if len(data) < 0x40 || f.ByteOrder != binary.LittleEndian {
		return nil, errors.New("short or big-endian ELF header")
	}
	hdr.Phoff = binary.LittleEndian.Uint64(data[0x20:])
	hdr.Shoff = binary.LittleEndian.Uint64(data[0x28:])
	hdr.Phentsize = binary.LittleEndian.Uint16(data[0x36:])
	hdr.Phnum = binary.LittleEndian.Uint16(data[0x38:])
	hdr.Shentsize = binary.LittleEndian.Uint16(data[0x3a:])
	hdr.Shnum = binary.LittleEndian.Uint16(data[0x3c:])
	end := uint64(0x40)
	grow := func(v uint64) {
		if v > end {
			end = v
		}
	}
	grow(hdr.Phoff + uint64(hdr.Phnum)*uint64(hdr.Phentsize))
	if hdr.Shnum > 0 {
		grow(hdr.Shoff + uint64(hdr.Shnum)*uint64(hdr.Shentsize))
	}
	for _, p := range f.Progs {
		grow(p.Off + p.Filesz)
	}
	for _, s := range f.Sections {
		if s.Type != elf.SHT_NOBITS && s.Type != elf.SHT_NULL {
			grow(s.Offset + s.FileSize)
		}
	}
	if end > uint64(len(data)) {
		return nil, fmt.Errorf("ELF headers refer to byte %d of a %d-byte file", end, len(data))
	}
	return data[:end], nil
}

// PVHEntry returns the 32-bit PVH entry point recorded in an ELF kernel's
// XEN_ELFNOTE_PHYS32_ENTRY note (owner "Xen", type 18). Firecracker (1.12+)
// and QEMU boot an ELF vmlinux through this entry.
func PVHEntry(vmlinux []byte) (uint64, error) {
	f, err := elf.NewFile(bytes.NewReader(vmlinux))
	if err != nil {
		return 0, fmt.Errorf("bad ELF: %w", err)
	}
	defer f.Close()
	var blobs [][]byte
	for _, p := range f.Progs {
		if p.Type == elf.PT_NOTE {
			b, err := io.ReadAll(p.Open())
			if err != nil {
				return 0, fmt.Errorf("reading PT_NOTE: %w", err)
			}
			blobs = append(blobs, b)
		}
	}
	if len(blobs) == 0 { // no program headers for notes: try the sections
		for _, s := range f.Sections {
			if s.Type == elf.SHT_NOTE {
				if b, err := s.Data(); err == nil {
					blobs = append(blobs, b)
				}
			}
		}
	}
	for _, b := range blobs {
		if entry, ok := findNote(b, "Xen", xenElfnotePhys32Entry); ok {
			switch len(entry) {
			case 4:
				return uint64(binary.LittleEndian.Uint32(entry)), nil
			case 8:
				return binary.LittleEndian.Uint64(entry), nil
			default:
				return 0, fmt.Errorf("PVH note has a %d-byte descriptor", len(entry))
			}
		}
	}
	return 0, errors.New("no PVH entry note (Xen ELF note type 18, XEN_ELFNOTE_PHYS32_ENTRY)")
}

// findNote scans an ELF note blob (4-byte aligned records) for owner/type.
func findNote(b []byte, owner string, typ uint32) ([]byte, bool) {
	align := func(n uint32) int { return int((n + 3) &^ 3) }
	for len(b) >= 12 {
		namesz := binary.LittleEndian.Uint32(b)
		descsz := binary.LittleEndian.Uint32(b[4:])
		t := binary.LittleEndian.Uint32(b[8:])
		b = b[12:]
		if namesz > uint32(len(b)) || align(namesz) > len(b) {
			return nil, false
		}
		name := string(bytes.TrimRight(b[:namesz], "\x00"))
		b = b[align(namesz):]
		if descsz > uint32(len(b)) {
			return nil, false
		}
		desc := b[:descsz]
		if align(descsz) > len(b) {
			b = nil
		} else {
			b = b[align(descsz):]
		}
		if name == owner && t == typ {
			return desc, true
		}
	}
	return nil, false
}
