// Package ext4 is the one home of ext4 image work, all of it without
// mounting: mkfs.ext4 -d (an image populated from a host directory), the
// one batched debugfs pass that gives the inodes the owners and modes their
// host copies could not carry (SetOwners), and reading files back out of an
// image with debugfs (Dump, Rdump, ReadFile, Stat). It runs e2fsprogs
// through sysexec, from the system directories first, with a plain
// environment. image, oci, guestbuild and disk use it; they build no
// mkfs.ext4 or debugfs command lines of their own.
package ext4

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/banger-dev/banger/internal/sysexec"
)

// toolEnv is the environment e2fsprogs runs with: the C locale (messages
// are parsed) and the system's directories.
var toolEnv = []string{"LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}

// tool finds an e2fsprogs program, the system's copy first: a root caller
// should not run one a user's PATH puts first.
func tool(name string) (string, error) {
	p, err := sysexec.LookSystemPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found: install e2fsprogs", name)
	}
	return p, nil
}

// Check reports whether mkfs.ext4 and debugfs are installed, with the
// package to install when one is not.
func Check() error {
	for _, n := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := tool(n); err != nil {
			return err
		}
	}
	return nil
}

// MkfsOptions are the mkfs.ext4 options callers choose. Every image gets
// -q -F and a root directory owned by 0:0.
type MkfsOptions struct {
	Label     string // -L; "" is none
	BlockSize int    // -b; 0 lets mkfs choose
	InodeSize int    // -I; 0 lets mkfs choose
	Inodes    int64  // -N; 0 lets mkfs choose
	// Lazy leaves the inode tables and the journal to be initialised by
	// the kernel on first mount: fast to make, for big empty disks.
	Lazy bool
	// Size is mkfs's size operand ("128M", "65536k"); "" takes the
	// image file's size.
	Size string
}

// Make runs mkfs.ext4 on the image file img (overwriting what it holds),
// populated from dir when dir is not "" (mkfs -d: files keep the host
// copy's owners and modes; see SetOwners).
func Make(ctx context.Context, img, dir string, o MkfsOptions) error {
	mkfs, err := tool("mkfs.ext4")
	if err != nil {
		return err
	}
	// Absolute paths can never be taken for options.
	if img, err = filepath.Abs(img); err != nil {
		return err
	}
	if dir != "" {
		if dir, err = filepath.Abs(dir); err != nil {
			return err
		}
	}
	args := []string{"-q", "-F"}
	if o.Label != "" {
		args = append(args, "-L", o.Label)
	}
	if o.BlockSize > 0 {
		args = append(args, "-b", strconv.Itoa(o.BlockSize))
	}
	if o.InodeSize > 0 {
		args = append(args, "-I", strconv.Itoa(o.InodeSize))
	}
	if o.Inodes > 0 {
		args = append(args, "-N", strconv.FormatInt(o.Inodes, 10))
	}
	ext := "root_owner=0:0"
	if o.Lazy {
		ext += ",lazy_itable_init=1,lazy_journal_init=1"
	}
	args = append(args, "-E", ext)
	if dir != "" {
		args = append(args, "-d", dir)
	}
	args = append(args, img)
	if o.Size != "" {
		args = append(args, o.Size)
	}
	_, err = sysexec.Run(ctx, sysexec.Cmd{Path: mkfs, Args: args, Env: toolEnv})
	return err
}

// OutOfSpace reports whether err is Make failing because the image was too
// small for the directory (blocks or inodes).
func OutOfSpace(err error) bool {
	var se *sysexec.Error
	if !errors.As(err, &se) || !se.Started {
		return false
	}
	m := strings.ToLower(se.Stderr)
	return strings.Contains(m, "no space") || strings.Contains(m, "could not allocate") ||
		strings.Contains(m, "no free space") || strings.Contains(m, "inode")
}

// CheckName refuses a path debugfs requests cannot quote ('"', which
// debugfs has no escape for) and control characters in general.
func CheckName(name string) error {
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("unsafe path: contains control character %#02x", c)
		}
		if c == '"' {
			return errors.New(`unsafe path: contains '"'`)
		}
	}
	return nil
}

// quote is a path in a debugfs request; CheckName passed it.
func quote(p string) string { return `"` + p + `"` }

// UnixMode returns the st_mode permission bits (07777) of m: the
// permissions, setuid, setgid and sticky.
func UnixMode(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= syscall.S_ISUID
	}
	if m&fs.ModeSetgid != 0 {
		p |= syscall.S_ISGID
	}
	if m&fs.ModeSticky != 0 {
		p |= syscall.S_ISVTX
	}
	return p
}

// FileMode is UnixMode's inverse: the bits 07777 of m as an fs.FileMode.
func FileMode(m uint32) fs.FileMode {
	fm := fs.FileMode(m & 0o777)
	if m&syscall.S_ISUID != 0 {
		fm |= fs.ModeSetuid
	}
	if m&syscall.S_ISGID != 0 {
		fm |= fs.ModeSetgid
	}
	if m&syscall.S_ISVTX != 0 {
		fm |= fs.ModeSticky
	}
	return fm
}
