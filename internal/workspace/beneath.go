package workspace

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/banger-dev/banger/internal/securefs"
	"golang.org/x/sys/unix"
)

// beneath opens paths below a root directory without following a symlink
// anywhere on the way: a tracked path whose parent directory was replaced
// by a symlink (cfg -> ~/.ssh) is not in the working tree, as git itself
// sees it, and nothing is read through the link. The last component may be
// a symlink; it is opened as itself (O_PATH|O_NOFOLLOW) and sent as one.
// The resolving is securefs.OpenBeneath's (openat2 RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS, or an O_NOFOLLOW walk where openat2 is refused).
type beneath struct {
	root *os.File // O_PATH|O_DIRECTORY handle of the root
}

// errSymlinkParent is why a path below the root cannot be opened: a
// component before the last is a symlink or not a directory, or the path
// is not clean. It counts as "not there" (fs.ErrNotExist), as for git.
type errSymlinkParent struct{ err error }

func (e errSymlinkParent) Error() string {
	return "reached through a symlink or a non-directory (not followed): " + e.err.Error()
}

func (e errSymlinkParent) Is(target error) bool { return target == fs.ErrNotExist }

func openBeneath(root string) (*beneath, error) {
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: root, Err: err}
	}
	return &beneath{root: os.NewFile(uintptr(fd), root)}, nil
}

func (b *beneath) Close() error { return b.root.Close() }

// open opens rel (a clean relative slash path, or ".") below the root with
// flags (O_NOFOLLOW and O_CLOEXEC are added). Its errors wrap
// fs.ErrNotExist when rel is not there or is reached only through a
// symlink.
func (b *beneath) open(rel string, flags int) (*os.File, error) {
	if rel != "." && path.Clean(rel) != rel || path.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil, &fs.PathError{Op: "open", Path: rel, Err: errors.New("not a clean relative path")}
	}
	f, err := securefs.OpenBeneath(b.root, rel, flags, 0)
	if err != nil && (errors.Is(err, securefs.ErrUnsafe) || errors.Is(err, unix.ENOTDIR)) {
		err = &fs.PathError{Op: "open", Path: rel, Err: errSymlinkParent{err}}
	}
	return f, err
}

// lstat is Lstat of rel below the root, never through a symlink.
func (b *beneath) lstat(rel string) (fs.FileInfo, error) {
	f, err := b.open(rel, unix.O_PATH)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Stat()
}

// entry is one path below the root, opened for the tar stream: its
// FileInfo (from the descriptor), its symlink target, and for a regular
// file an open file to read (whose FileInfo it is). close releases it.
type entry struct {
	fi   fs.FileInfo
	link string
	file *os.File
}

func (e *entry) close() {
	if e.file != nil {
		e.file.Close()
	}
}

// openEntry opens rel below the root as what it is, never following a
// symlink: a symlink is read as a link, a regular file is opened for
// reading (and must still be the file first found there), a directory is
// only described. Other types come back with no file (the caller skips
// them).
func (b *beneath) openEntry(rel string) (*entry, error) {
	p, err := b.open(rel, unix.O_PATH)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	fi, err := p.Stat()
	if err != nil {
		return nil, err
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		link, err := readlinkFd(int(p.Fd()))
		if err != nil {
			return nil, &fs.PathError{Op: "readlink", Path: rel, Err: err}
		}
		return &entry{fi: fi, link: link}, nil
	case fi.Mode().IsRegular():
		f, err := b.open(rel, unix.O_RDONLY|unix.O_NONBLOCK)
		if err != nil {
			return nil, err
		}
		rfi, err := f.Stat()
		if err == nil && (!rfi.Mode().IsRegular() || !os.SameFile(fi, rfi)) {
			err = &fs.PathError{Op: "open", Path: rel, Err: fmt.Errorf("replaced while being read: %w", fs.ErrNotExist)}
		}
		if err != nil {
			f.Close()
			return nil, err
		}
		return &entry{fi: rfi, file: f}, nil
	}
	return &entry{fi: fi}, nil
}

// readlinkFd reads the target of the symlink fd was opened on
// (O_PATH|O_NOFOLLOW): readlinkat with an empty path.
func readlinkFd(fd int) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}
