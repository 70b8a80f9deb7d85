package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-dev/banger/internal/sysexec"
	"golang.org/x/sys/unix"
)

// Overlays: a forked VM's disks under banger-vmm are qcow2 files whose
// backing file is the frozen disk of the VM it was forked from, so a fork
// costs O(1) whatever the image's size. QEMU reads the chain natively
// (Firecracker reads raw files only; its forks copy instead).
//
// A file is qcow2 when, and only when, root marked it so with the extended
// attribute FormatXattr. Content is never probed: a guest can write a qcow2
// header into its raw disk, and a probed qcow2 header may name any host file
// as its backing file. A user.* attribute can be set only by the file's
// owner (here root, in a root-only directory): neither a guest nor the
// owner user can mark a file.

// FormatXattr names a disk's format when it is not raw.
const FormatXattr = "user.banger.format"

// Formats a disk file can have.
const (
	FormatRaw   = "raw"
	FormatQcow2 = "qcow2"
)

// Overlay is the CloneMethod of a disk made by MakeOverlay.
const Overlay CloneMethod = "qcow2-overlay"

// FormatOf returns the format root marked f with (FormatRaw when unmarked).
func FormatOf(f *os.File) (string, error) {
	buf := make([]byte, 16)
	n, err := unix.Fgetxattr(int(f.Fd()), FormatXattr, buf)
	switch {
	case errors.Is(err, unix.ENODATA), errors.Is(err, unix.ENOTSUP):
		return FormatRaw, nil
	case err != nil:
		return "", fmt.Errorf("format of %s: %w", f.Name(), err)
	}
	switch v := string(buf[:n]); v {
	case FormatQcow2, FormatRaw:
		return v, nil
	default:
		return "", fmt.Errorf("format of %s: unknown format %q", f.Name(), v)
	}
}

// MakeOverlay creates path, which must not exist, as an empty qcow2 overlay
// whose backing file is backing (an absolute path, read as backingFormat),
// and marks it qcow2. The backing file's size is the overlay's. On failure
// nothing is left at path.
func MakeOverlay(ctx context.Context, path, backing, backingFormat string) (err error) {
	if !filepath.IsAbs(path) || !filepath.IsAbs(backing) {
		return fmt.Errorf("make overlay %s: paths must be absolute", path)
	}
	if backingFormat != FormatRaw && backingFormat != FormatQcow2 {
		return fmt.Errorf("make overlay %s: backing format %q", path, backingFormat)
	}
	if strings.ContainsAny(backing, ",:") {
		// qemu-img would read them as options or a protocol.
		return fmt.Errorf("make overlay %s: backing path %q has a ',' or ':'", path, backing)
	}
	// The system's qemu-img first: a root helper should not run one a
	// user's PATH puts first.
	qimg, err := sysexec.LookSystemPath("qemu-img")
	if err != nil {
		return fmt.Errorf("make overlay %s: qemu-img not found (install qemu-utils)", path)
	}
	// Reserve the name first: qemu-img would follow or replace what is
	// there.
	f, err := createExclusive(path)
	if err != nil {
		return fmt.Errorf("make overlay: %w", err)
	}
	f.Close()
	defer func() {
		if err != nil {
			os.Remove(path)
		}
	}()
	_, err = sysexec.Run(ctx, sysexec.Cmd{Path: qimg, Args: []string{"create", "-q", "-f", "qcow2", "-F", backingFormat, "-b", backing, path},
		Env: []string{"LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}})
	if err != nil {
		return fmt.Errorf("make overlay %s: %w", path, err)
	}
	f, err = os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("make overlay %s: %w", path, err)
	}
	defer f.Close()
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if err := unix.Fsetxattr(int(f.Fd()), FormatXattr, []byte(FormatQcow2), 0); err != nil {
		return fmt.Errorf("make overlay %s: mark it qcow2 (the state dir's filesystem needs user xattrs): %w", path, err)
	}
	return nil
}
