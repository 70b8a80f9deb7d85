// Package securefs is how root touches files: through directory handles
// that another user cannot redirect.
//
// The root helper, the updater and the guest build run as root, but some of
// the paths they are given lie in directories the owner user (or anyone)
// can write. A check-then-use by path is a race there: between the check and
// the use the directory can be swapped for a symlink. So root never uses
// such a path by name. Instead it
//
//   - opens directories and files with openat2(RESOLVE_NO_SYMLINKS) from
//     "/" (OpenNoFollow), or RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS below a
//     pinned directory handle (OpenBeneath), and works relative to the
//     handle (mkdirat, unlinkat, fchownat) from then on;
//   - decides by fstat on the open handle (owner, type, mode), never by an
//     earlier Lstat;
//   - runs programs and builds files only in root-only places: a path whose
//     every component is owned by root and writable by nobody else
//     (CheckRootOnly) cannot change under root, so it is safe to hand to an
//     external program by name.
//
// A world-writable directory with the sticky bit (/tmp) is accepted in a
// root-only chain when the entry below it is root's own: the sticky bit
// keeps other users from renaming or removing it.
package securefs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ErrUnsafe marks a path that failed a safety check.
var ErrUnsafe = errors.New("unsafe path")

func unsafef(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrUnsafe, fmt.Sprintf(format, a...))
}

const resolveStrict = unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// OpenNoFollow opens the absolute path p without following a symlink in any
// component (openat2 RESOLVE_NO_SYMLINKS from "/"). flags get O_CLOEXEC and
// O_NOFOLLOW added.
func OpenNoFollow(p string, flags int, mode uint32) (*os.File, error) {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return nil, unsafef("%q is not an absolute, clean path", p)
	}
	fd, err := openat2(unix.AT_FDCWD, p, flags, mode, resolveStrict)
	if err != nil {
		return nil, pathErr("open", p, err)
	}
	return os.NewFile(uintptr(fd), p), nil
}

// OpenBeneath opens rel below the directory handle dir, refusing any
// symlink and any escape (RESOLVE_BENEATH). flags get O_CLOEXEC and
// O_NOFOLLOW added.
func OpenBeneath(dir *os.File, rel string, flags int, mode uint32) (*os.File, error) {
	if rel == "" || filepath.IsAbs(rel) || filepath.Clean(rel) != rel || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil, unsafef("%q is not a clean relative path", rel)
	}
	fd, err := openat2(int(dir.Fd()), rel, flags, mode, resolveStrict|unix.RESOLVE_BENEATH)
	if err != nil {
		return nil, pathErr("open", filepath.Join(dir.Name(), rel), err)
	}
	return os.NewFile(uintptr(fd), filepath.Join(dir.Name(), rel)), nil
}

// openat2 is openat2(2) with O_CLOEXEC|O_NOFOLLOW added. Where the kernel
// or a seccomp filter refuses openat2 with ENOSYS (systemd's
// RestrictSUIDSGID= does, since it cannot inspect open_how), it walks the
// path one component at a time instead: each opened relative to the last
// with O_NOFOLLOW, so no link is followed; the path is clean and has no
// "..", so it cannot leave its start either.
func openat2(dirfd int, p string, flags int, mode uint32, resolve uint64) (int, error) {
	flags |= unix.O_CLOEXEC | unix.O_NOFOLLOW
	if !walkOnly.Load() {
		how := unix.OpenHow{Flags: uint64(flags), Mode: uint64(mode), Resolve: resolve}
		var fd int
		var err error
		// EAGAIN: a rename elsewhere raced the lookup (RESOLVE_BENEATH
		// refuses to guess); try again a few times.
		for range 8 {
			if fd, err = unix.Openat2(dirfd, p, &how); err != unix.EAGAIN && err != unix.EINTR {
				break
			}
		}
		if !errors.Is(err, unix.ENOSYS) {
			return fd, err
		}
		walkOnly.Store(true) // no openat2 here: don't ask again
	}
	return walkOpen(dirfd, p, flags, mode)
}

// walkOnly is set once openat2 turned out to be refused (ENOSYS), or by
// ForceComponentWalk.
var walkOnly atomic.Bool

// ForceComponentWalk makes every open take the component walk used where
// openat2 is refused, until restore is called. For tests, which must show
// that both resolvers refuse the same paths.
func ForceComponentWalk() (restore func()) {
	prev := walkOnly.Swap(true)
	return func() { walkOnly.Store(prev) }
}

func walkOpen(dirfd int, p string, flags int, mode uint32) (int, error) {
	cur := dirfd
	rel := p
	if strings.HasPrefix(p, "/") {
		root, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		cur = root
		rel = strings.TrimLeft(p, "/")
	}
	closeCur := func() {
		if cur != dirfd {
			unix.Close(cur)
		}
	}
	if rel == "" || rel == "." {
		defer closeCur()
		return unix.Openat(cur, ".", flags, mode)
	}
	parts := strings.Split(rel, "/")
	for i, part := range parts {
		if part == "" || part == "." || part == ".." {
			closeCur()
			return -1, unix.EXDEV
		}
		if i == len(parts)-1 {
			fd, err := unix.Openat(cur, part, flags, mode)
			closeCur()
			return fd, err
		}
		next, err := unix.Openat(cur, part, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			if errors.Is(err, unix.ENOTDIR) {
				// A symlink opened with O_NOFOLLOW|O_DIRECTORY fails ENOTDIR.
				var st unix.Stat_t
				if unix.Fstatat(cur, part, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
					err = unix.ELOOP
				}
			}
			closeCur()
			return -1, err
		}
		closeCur()
		cur = next
	}
	return -1, unix.EINVAL
}

func pathErr(op, p string, err error) error {
	switch {
	case errors.Is(err, unix.ELOOP):
		return unsafef("%s: a component is a symlink", p)
	case errors.Is(err, unix.EXDEV):
		return unsafef("%s: escapes its directory", p)
	}
	return &fs.PathError{Op: op, Path: p, Err: err}
}

// Stat is fstat on an open handle.
func Stat(f *os.File) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstat(int(f.Fd()), &st)
	return st, err
}

// OpenOwned opens the existing regular file p for reading on behalf of a
// less trusted user: no symlink in any component, and the file must belong
// to one of uids (root reads for the owner only what the owner owns).
func OpenOwned(p string, uids ...int) (*os.File, error) {
	f, err := OpenNoFollow(p, unix.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	st, err := Stat(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		f.Close()
		return nil, unsafef("%s is not a regular file", p)
	}
	for _, u := range uids {
		if int(st.Uid) == u {
			return f, nil
		}
	}
	f.Close()
	return nil, unsafef("%s is owned by uid %d, not by uid %v", p, st.Uid, uids)
}

// CheckRootOnly checks that no user but root can change what p names: every
// component from "/" down to p exists, is not a symlink, is owned by root
// and is not writable by group or others — except a sticky directory whose
// next component is root's (the sticky bit keeps others from replacing it).
func CheckRootOnly(p string) error {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return unsafef("%q is not an absolute, clean path", p)
	}
	cur, err := os.OpenFile("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer func() { cur.Close() }()
	st, err := Stat(cur)
	if err != nil {
		return err
	}
	if err := rootOnly("/", st); err != nil {
		return err
	}
	if p == "/" {
		return nil
	}
	parts := strings.Split(p[1:], "/")
	curPath := ""
	for i, part := range parts {
		curPath += "/" + part
		fd, err := unix.Openat(int(cur.Fd()), part, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return &fs.PathError{Op: "open", Path: curPath, Err: err}
		}
		next := os.NewFile(uintptr(fd), curPath)
		cur.Close()
		cur = next
		if st, err = Stat(cur); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return unsafef("%s: component %s is a symlink", p, curPath)
		}
		if i < len(parts)-1 && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return unsafef("%s: component %s is not a directory", p, curPath)
		}
		if err := rootOnly(curPath, st); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return nil
}

// rootOnly: owned by root (or, in a process that is not root, by itself:
// such a process guards only its own files); not writable by group/others, unless it is a
// sticky directory (whose root-owned children others cannot replace; the
// child is checked in turn).
func rootOnly(p string, st unix.Stat_t) error {
	if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return unsafef("%s is owned by uid %d, not root", p, st.Uid)
	}
	if st.Mode&0o022 != 0 {
		if st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Mode&unix.S_ISVTX != 0 {
			return nil
		}
		return unsafef("%s is writable by group or others (mode %04o)", p, st.Mode&0o7777)
	}
	return nil
}

// MkdirBeneath creates (or opens, if it already is a directory owned by
// root and not writable by others) the directory name below dir with perm,
// and returns a handle to it. The mode is set exactly (no umask).
func MkdirBeneath(dir *os.File, name string, perm uint32) (*os.File, error) {
	if err := unix.Mkdirat(int(dir.Fd()), name, perm); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, &fs.PathError{Op: "mkdir", Path: filepath.Join(dir.Name(), name), Err: err}
	}
	d, err := OpenBeneath(dir, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	st, err := Stat(d)
	if err == nil && os.Geteuid() == 0 {
		err = rootOnly(d.Name(), st)
	}
	if err == nil && st.Mode&0o7777 != perm {
		err = unix.Fchmod(int(d.Fd()), perm)
	}
	if err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// CreateBeneath creates name below dir exclusively (O_EXCL|O_NOFOLLOW) with
// exactly perm.
func CreateBeneath(dir *os.File, name string, flags int, perm uint32) (*os.File, error) {
	f, err := OpenBeneath(dir, name, flags|unix.O_CREAT|unix.O_EXCL, perm)
	if err != nil {
		return nil, err
	}
	if err := unix.Fchmod(int(f.Fd()), perm); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// RemoveBeneath removes name below dir and, if it is a directory, all it
// holds, never following a symlink (a symlink is removed, not its target).
// A missing name is not an error.
func RemoveBeneath(dir *os.File, name string) error {
	if name == "" || strings.ContainsRune(name, '/') || name == "." || name == ".." {
		return unsafef("%q is not a single path component", name)
	}
	err := unix.Unlinkat(int(dir.Fd()), name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return &fs.PathError{Op: "unlink", Path: filepath.Join(dir.Name(), name), Err: err}
	}
	sub, err := OpenBeneath(dir, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	for {
		names, rerr := sub.Readdirnames(256)
		for _, n := range names {
			if err := RemoveBeneath(sub, n); err != nil {
				sub.Close()
				return err
			}
		}
		if rerr == io.EOF || len(names) == 0 {
			break
		}
		if rerr != nil {
			sub.Close()
			return rerr
		}
		// Entries were removed: read the directory again from the start.
		if _, err := sub.Seek(0, io.SeekStart); err != nil {
			sub.Close()
			return err
		}
	}
	sub.Close()
	if err := unix.Unlinkat(int(dir.Fd()), name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return &fs.PathError{Op: "rmdir", Path: filepath.Join(dir.Name(), name), Err: err}
	}
	return nil
}

// ChownBeneath changes the owner of name below dir without following a
// symlink.
func ChownBeneath(dir *os.File, name string, uid, gid int) error {
	if err := unix.Fchownat(int(dir.Fd()), name, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "chown", Path: filepath.Join(dir.Name(), name), Err: err}
	}
	return nil
}
