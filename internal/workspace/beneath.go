package workspace

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// beneath opens paths below a root directory without following a symlink
// anywhere on the way: a tracked path whose parent directory was replaced
// by a symlink (cfg -> ~/.ssh) is not in the working tree, as git itself
// sees it, and nothing is read through the link. The last component may be
// a symlink; it is opened as itself (O_PATH|O_NOFOLLOW) and sent as one.
//
// Paths are resolved by the kernel with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS) from a descriptor of the
// root, or, where openat2 is missing, one component at a time with
// openat(O_NOFOLLOW), each directory opened relative to the previous one.
type beneath struct {
	root string
	fd   int // O_PATH|O_DIRECTORY descriptor of root
}

// noOpenat2 is set once openat2 turned out to be missing (ENOSYS), or by
// tests to exercise the component walk.
var noOpenat2 atomic.Bool

// errSymlinkParent is why a path below the root cannot be opened: a
// component before the last is a symlink or not a directory. It counts as
// "not there" (fs.ErrNotExist), as for git.
type errSymlinkParent struct{ errno unix.Errno }

func (e errSymlinkParent) Error() string {
	return "reached through a symlink or a non-directory (not followed): " + e.errno.Error()
}

func (e errSymlinkParent) Is(target error) bool { return target == fs.ErrNotExist }

func openBeneath(root string) (*beneath, error) {
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: root, Err: err}
	}
	return &beneath{root: root, fd: fd}, nil
}

func (b *beneath) Close() error { return unix.Close(b.fd) }

// open opens rel (a clean relative slash path, or ".") below the root with
// flags, O_NOFOLLOW and O_CLOEXEC added. Its errors wrap fs.ErrNotExist
// when rel is not there or is reached only through a symlink.
func (b *beneath) open(rel string, flags int) (int, error) {
	flags |= unix.O_NOFOLLOW | unix.O_CLOEXEC
	if rel != "." {
		for _, c := range strings.Split(rel, "/") {
			if c == "" || c == "." || c == ".." {
				return -1, &fs.PathError{Op: "open", Path: rel, Err: errors.New("not a clean relative path")}
			}
		}
	}
	var fd int
	var err error
	if !noOpenat2.Load() {
		how := unix.OpenHow{Flags: uint64(flags), Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
		for range 8 {
			if fd, err = unix.Openat2(b.fd, rel, &how); err != unix.EAGAIN && err != unix.EINTR {
				break
			}
		}
		if err == unix.ENOSYS {
			noOpenat2.Store(true)
		}
	}
	if noOpenat2.Load() {
		fd, err = b.walk(rel, flags)
	}
	if err != nil {
		var errno unix.Errno
		if errors.As(err, &errno) && (errno == unix.ELOOP || errno == unix.ENOTDIR || errno == unix.EXDEV) {
			err = errSymlinkParent{errno}
		}
		return -1, &fs.PathError{Op: "open", Path: rel, Err: err}
	}
	return fd, nil
}

// walk is open without openat2: every directory on the way is opened
// O_PATH|O_NOFOLLOW|O_DIRECTORY relative to the previous one, so a symlink
// there fails (ENOTDIR or ELOOP) instead of being followed.
func (b *beneath) walk(rel string, flags int) (int, error) {
	if rel == "." {
		return unix.Openat(b.fd, ".", flags, 0)
	}
	parts := strings.Split(rel, "/")
	dir := b.fd
	defer func() {
		if dir != b.fd {
			unix.Close(dir)
		}
	}()
	for _, c := range parts[:len(parts)-1] {
		next, err := unix.Openat(dir, c, unix.O_PATH|unix.O_NOFOLLOW|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		if dir != b.fd {
			unix.Close(dir)
		}
		dir = next
	}
	return unix.Openat(dir, parts[len(parts)-1], flags, 0)
}

// lstat is Lstat of rel below the root, never through a symlink.
func (b *beneath) lstat(rel string) (fs.FileInfo, error) {
	fd, err := b.open(rel, unix.O_PATH)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), rel)
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
	fd, err := b.open(rel, unix.O_PATH)
	if err != nil {
		return nil, err
	}
	p := os.NewFile(uintptr(fd), rel)
	defer p.Close()
	fi, err := p.Stat()
	if err != nil {
		return nil, err
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		link, err := readlinkFd(fd)
		if err != nil {
			return nil, &fs.PathError{Op: "readlink", Path: rel, Err: err}
		}
		return &entry{fi: fi, link: link}, nil
	case fi.Mode().IsRegular():
		rfd, err := b.open(rel, unix.O_RDONLY|unix.O_NONBLOCK)
		if err != nil {
			return nil, err
		}
		f := os.NewFile(uintptr(rfd), rel)
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
