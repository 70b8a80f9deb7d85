// Package disk creates the block-device images a VM boots from, without ever
// mounting anything.
//
// Each VM gets its own writable copy of the image's read-only rootfs
// (CloneRootfs) and a fresh ext4 work disk for /root (MakeWorkDisk). The root
// copy is a reflink (FICLONE) where the filesystem supports it, so creating a
// VM costs O(1) in time and space; elsewhere it falls back to a sparse copy,
// which costs O(allocated image size) in time but still shares nothing and
// allocates only the blocks that hold data. Work disks are sparse files
// formatted by mkfs.ext4, seeded from a directory with its -d option, so no
// loop device, mount or root privilege is needed to build one.
//
// Files are created exclusively (O_EXCL, mode 0600) and removed again if a
// step fails, so a failed call leaves nothing behind and never clobbers or
// follows an existing path.
package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/banger-dev/banger/internal/ext4"
	"golang.org/x/sys/unix"
)

// CloneMethod says how CloneRootfs produced its copy.
type CloneMethod string

const (
	// Reflink: the copy shares the base's blocks copy-on-write (FICLONE).
	Reflink CloneMethod = "reflink"
	// SparseCopy: the data was copied, holes and zero blocks were skipped.
	// Creating a VM this way costs O(image size); callers warn about it.
	SparseCopy CloneMethod = "sparse-copy"
)

// CloneRootfs makes dst a private, writable copy of the regular file base and
// reports how it did so. dst must not exist; it is created with mode 0600
// (O_EXCL, so an existing file or symlink at dst is an error) and removed
// again if the copy fails. The copy is flushed to disk before returning.
func CloneRootfs(base, dst string) (method CloneMethod, err error) {
	src, err := os.Open(base)
	if err != nil {
		return "", fmt.Errorf("clone rootfs: %w", err)
	}
	defer src.Close()
	out, err := createExclusive(dst)
	if err != nil {
		return "", fmt.Errorf("clone rootfs: %w", err)
	}
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("clone rootfs: close %s: %w", dst, cerr)
		}
		if err != nil {
			os.Remove(dst)
			method = ""
		}
	}()
	return CloneFile(out, src)
}

// CloneFile copies the open regular file src into the open, empty file out:
// a reflink where the filesystem allows it, else a sparse copy; then syncs
// out. Working on handles, it never resolves a path.
func CloneFile(out, src *os.File) (CloneMethod, error) {
	st, err := src.Stat()
	if err != nil {
		return "", fmt.Errorf("clone %s: %w", src.Name(), err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("clone: %s is not a regular file", src.Name())
	}
	method := Reflink
	if err = unix.IoctlFileClone(int(out.Fd()), int(src.Fd())); err != nil {
		if !reflinkUnsupported(err) {
			return "", fmt.Errorf("clone: reflink %s to %s: %w", src.Name(), out.Name(), err)
		}
		method = SparseCopy
		if err = sparseCopy(out, src, st.Size()); err != nil {
			return "", fmt.Errorf("clone: copy %s to %s: %w", src.Name(), out.Name(), err)
		}
	}
	if err = out.Sync(); err != nil {
		return "", fmt.Errorf("clone: sync %s: %w", out.Name(), err)
	}
	return method, nil
}

// reflinkUnsupported tells the errors that mean "this pair of files cannot
// share blocks" (other filesystem, no reflink support) from real failures.
func reflinkUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP) ||
		errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) ||
		errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.ENOSYS)
}

const (
	copyChunk = 1 << 20 // bytes read at a time
	zeroBlock = 4096    // granularity at which zero runs are skipped
)

// sparseCopy copies the first size bytes of src into the empty file dst,
// visiting only src's data extents (SEEK_DATA/SEEK_HOLE) and leaving holes in
// dst wherever src has holes or whole zero blocks.
func sparseCopy(dst, src *os.File, size int64) error {
	if err := dst.Truncate(size); err != nil {
		return err
	}
	buf := make([]byte, copyChunk)
	sfd := int(src.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(sfd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			if off != 0 {
				return fmt.Errorf("seek data at %d: %w", off, err)
			}
			// No SEEK_DATA on this filesystem: treat it all as data.
			data, err = 0, nil
		}
		hole, err := unix.Seek(sfd, data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		hole = min(hole, size)
		if err := copyRange(dst, src, data, hole, buf); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// copyRange copies src[from:to] to the same offsets in dst, skipping
// zeroBlock-aligned blocks that are entirely zero.
func copyRange(dst, src *os.File, from, to int64, buf []byte) error {
	for off := from; off < to; {
		n := int(min(int64(len(buf)), to-off))
		k, err := src.ReadAt(buf[:n], off)
		if k < n {
			if err == nil || errors.Is(err, io.EOF) {
				err = fmt.Errorf("base shrank during the copy (short read at %d)", off+int64(k))
			}
			return err
		}
		// Write each maximal run of non-zero blocks in one call.
		for i := 0; i < n; {
			end := min(i+zeroBlock-int((off+int64(i))%zeroBlock), n)
			if isZero(buf[i:end]) {
				i = end
				continue
			}
			j := end
			for j < n {
				next := min(j+zeroBlock, n)
				if isZero(buf[j:next]) {
					break
				}
				j = next
			}
			if _, err := dst.WriteAt(buf[i:j], off+int64(i)); err != nil {
				return err
			}
			i = j
		}
		off += int64(n)
	}
	return nil
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// MakeWorkDisk creates path as a sparse file of sizeBytes and formats it as
// ext4 whose root directory is owned by root. If seedDir is not empty its
// contents are copied into the new filesystem (mkfs.ext4 -d), keeping their
// modes and ownership. path must not exist; it is created with mode 0600 and
// removed if any step fails (including ctx being cancelled while mkfs runs).
func MakeWorkDisk(ctx context.Context, path string, sizeBytes int64, seedDir string) (err error) {
	if sizeBytes <= 0 {
		return fmt.Errorf("make work disk %s: size must be positive, got %d", path, sizeBytes)
	}
	// Absolute paths can never be taken for mkfs options.
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("make work disk %s: %w", path, err)
	}
	var seed string
	if seedDir != "" {
		if seed, err = filepath.Abs(seedDir); err != nil {
			return fmt.Errorf("make work disk %s: seed %s: %w", path, seedDir, err)
		}
		fi, err := os.Stat(seed)
		if err != nil {
			return fmt.Errorf("make work disk %s: seed: %w", path, err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("make work disk %s: seed %s is not a directory", path, seedDir)
		}
	}
	f, err := createExclusive(abs)
	if err != nil {
		return fmt.Errorf("make work disk: %w", err)
	}
	defer func() {
		if err != nil {
			os.Remove(abs)
		}
	}()
	err = f.Truncate(sizeBytes)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("make work disk %s: size %d: %w", path, sizeBytes, err)
	}

	if err := ext4.Make(ctx, abs, seed, ext4.MkfsOptions{Lazy: true}); err != nil {
		return fmt.Errorf("make work disk %s: %w", path, err)
	}
	return nil
}

// createExclusive creates p for writing with mode 0600, failing if anything
// (including a symlink) already exists there.
func createExclusive(p string) (*os.File, error) {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	// The umask can only have removed bits; make the mode exact anyway.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		os.Remove(p)
		return nil, err
	}
	return f, nil
}

// ParseSize parses a size such as "512M", "2G", "1GiB", "64k" or "1048576"
// into bytes. The suffixes K, M, G and T (case-insensitive, optionally
// followed by "iB") are binary multiples of 1024; a bare number or a "B"
// suffix means bytes. Decimal units ("GB", "MB", ...) are refused as
// ambiguous, as are fractions, signs, zero and values that overflow int64.
func ParseSize(s string) (int64, error) {
	in := s
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("empty size")
	}
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	num, unit := s[:i], s[i:]
	if num == "" {
		return 0, fmt.Errorf("invalid size %q: must start with a number, e.g. 512M, 2G, 1GiB or 1048576", in)
	}
	if strings.HasPrefix(unit, ".") || strings.HasPrefix(unit, ",") {
		return 0, fmt.Errorf("invalid size %q: fractions are not supported, use a smaller unit (e.g. 1536M)", in)
	}
	var shift uint
	switch strings.ToLower(unit) {
	case "", "b":
		shift = 0
	case "k", "kib":
		shift = 10
	case "m", "mib":
		shift = 20
	case "g", "gib":
		shift = 30
	case "t", "tib":
		shift = 40
	case "kb", "mb", "gb", "tb":
		return 0, fmt.Errorf("invalid size %q: unit %q is ambiguous, use %s or %siB (powers of 1024)", in, unit, unit[:1], strings.ToUpper(unit[:1]))
	default:
		return 0, fmt.Errorf("invalid size %q: unknown unit %q, use K, M, G, T (or KiB, MiB, GiB, TiB) or plain bytes", in, unit)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("invalid size %q: too large", in)
	}
	if n == 0 {
		return 0, fmt.Errorf("invalid size %q: must be greater than zero", in)
	}
	return n << shift, nil
}
