package fcvmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Drive formats. A drive is raw, as in Firecracker, unless its file carries
// the extended attribute user.banger.format = "qcow2": banger's root helper
// sets it on the qcow2 overlays it makes for forks, in directories only root
// can write, so neither the guest nor the VM's owner can set it. The file's
// content never decides: a guest can write a qcow2 header into its raw disk,
// and a qcow2 header names other host files (its backing file) that QEMU
// would then open.
const (
	formatXattr = "user.banger.format"
	formatRaw   = "raw"
	formatQcow2 = "qcow2"
	// qcow2MaxChain bounds a backing chain (and so a chain that loops).
	qcow2MaxChain = 32
)

// driveFormat reads the format attribute on an opened drive file (never by
// path: the descriptor is what QEMU gets). No attribute, a file system
// without extended attributes, or any value but "qcow2" is raw.
func driveFormat(f *os.File) (string, error) {
	var buf [16]byte
	n, err := unix.Fgetxattr(int(f.Fd()), formatXattr, buf[:])
	switch {
	case err == nil:
		if string(buf[:n]) == formatQcow2 {
			return formatQcow2, nil
		}
		return formatRaw, nil
	case errors.Is(err, unix.ENODATA), errors.Is(err, unix.ENOTSUP), errors.Is(err, unix.ERANGE):
		// No attribute, no xattr support, or a value longer than "qcow2".
		return formatRaw, nil
	}
	return "", fmt.Errorf("cannot read %s: %s", formatXattr, rustIOError(err))
}

// qcow2 header fields (docs/interop/qcow2.txt in QEMU), big-endian.
const (
	qcow2Magic          = "QFI\xfb"
	qcow2HeaderV2Len    = 72
	qcow2ExtEnd         = 0x00000000
	qcow2ExtBackingFmt  = 0xe2792aca
	qcow2IncompatData   = 1 << 2 // an external data file
	qcow2MaxBackingName = 1023   // QEMU's limit
	// qcow2HeaderArea is how much of an image is read for its header and
	// extensions (QEMU reads extensions up to the backing file name, or the
	// end of the first cluster, 64 KiB by default).
	qcow2HeaderArea = 64 << 10
)

// qcow2Backing is what a qcow2 header says about its backing file.
type qcow2Backing struct {
	path, format string // path "" when the image has no backing file
}

// readQcow2Backing reads the header of the qcow2 image f (a file root marked
// as qcow2, or the backing file such a header names with format qcow2): its
// backing file and that file's format. It refuses what would make QEMU open
// a host file the header does not name absolutely and with its format: a
// backing file without an explicit format (QEMU would probe its content), a
// relative backing file name (QEMU resolves it against the image's name,
// which is /dev/fdset/N here), a format other than raw or qcow2, and an
// external data file.
func readQcow2Backing(f *os.File) (qcow2Backing, error) {
	var none qcow2Backing
	hdr := make([]byte, qcow2HeaderArea)
	n, err := f.ReadAt(hdr, 0)
	if n < qcow2HeaderV2Len {
		if err == nil || errors.Is(err, io.EOF) {
			return none, errors.New("not a qcow2 image (too short)")
		}
		return none, fmt.Errorf("cannot read the qcow2 header: %s", rustIOError(err))
	}
	hdr = hdr[:n]
	be := binary.BigEndian
	if string(hdr[:4]) != qcow2Magic {
		return none, errors.New("not a qcow2 image (no qcow2 magic)")
	}
	version := be.Uint32(hdr[4:])
	if version != 2 && version != 3 {
		return none, fmt.Errorf("unsupported qcow2 version %d", version)
	}
	backingOff, backingLen := be.Uint64(hdr[8:]), be.Uint32(hdr[16:])
	extStart := uint64(qcow2HeaderV2Len)
	if version == 3 {
		if n < 104 {
			return none, errors.New("truncated qcow2 version 3 header")
		}
		if be.Uint64(hdr[72:])&qcow2IncompatData != 0 {
			return none, errors.New("the qcow2 image uses an external data file, which banger-vmm does not open")
		}
		if extStart = uint64(be.Uint32(hdr[100:])); extStart < 104 {
			return none, fmt.Errorf("invalid qcow2 header length %d", extStart)
		}
	}
	if backingOff == 0 {
		return none, nil
	}
	if backingLen == 0 || backingLen > qcow2MaxBackingName {
		return none, fmt.Errorf("invalid qcow2 backing file name length %d", backingLen)
	}
	name := make([]byte, backingLen)
	if _, err := f.ReadAt(name, int64(backingOff)); err != nil {
		return none, fmt.Errorf("cannot read the qcow2 backing file name: %s", rustIOError(err))
	}
	b := qcow2Backing{path: string(name)}
	// Header extensions: type, length, data padded to 8 bytes, up to the
	// end marker and, as QEMU reads them, before the backing file name.
	extEnd := uint64(len(hdr))
	if backingOff < extEnd {
		extEnd = backingOff
	}
	for off := extStart; off+8 <= extEnd; {
		typ, l := be.Uint32(hdr[off:]), uint64(be.Uint32(hdr[off+4:]))
		if typ == qcow2ExtEnd {
			break
		}
		data := off + 8
		if data+l > extEnd {
			break
		}
		if typ == qcow2ExtBackingFmt {
			b.format = string(hdr[data : data+l])
		}
		off = data + (l+7)&^7
	}
	switch {
	case !filepath.IsAbs(b.path):
		return none, fmt.Errorf("the qcow2 backing file %q is not an absolute path", b.path)
	case b.format == "":
		return none, fmt.Errorf("the qcow2 image names its backing file %s without its format (QEMU would probe the file's content)", b.path)
	case b.format != formatRaw && b.format != formatQcow2:
		return none, fmt.Errorf("the qcow2 backing file %s has format %q (only raw and qcow2 are opened)", b.path, b.format)
	}
	return b, nil
}

// qcow2Chain follows the backing chain of the qcow2 image top as QEMU will,
// from the headers, and returns the backing files' formats, nearest first
// (none for an image without a backing file). Each backing file is opened
// read-only to check that it exists (a qcow2 one also to read its header).
func qcow2Chain(top *os.File) ([]string, error) {
	var formats []string
	cur := top
	defer func() {
		if cur != top {
			cur.Close()
		}
	}()
	for {
		b, err := readQcow2Backing(cur)
		if err != nil {
			if cur != top {
				return nil, fmt.Errorf("qcow2 backing file %s: %v", cur.Name(), err)
			}
			return nil, err
		}
		if b.path == "" {
			return formats, nil
		}
		if len(formats) == qcow2MaxChain {
			return nil, fmt.Errorf("the qcow2 backing chain is longer than %d images", qcow2MaxChain)
		}
		next, err := os.Open(b.path)
		if err != nil {
			return nil, fmt.Errorf("qcow2 backing file %s: %s", b.path, rustIOError(err))
		}
		formats = append(formats, b.format)
		if cur != top {
			cur.Close()
		}
		cur = next
		if b.format != formatQcow2 {
			return formats, nil
		}
	}
}
