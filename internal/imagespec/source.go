package imagespec

import (
	"errors"
	"fmt"
	"github.com/banger-dev/banger/internal/safepath"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/securefs"
)

// entry is one file or directory of a copy's source, as read.
type entry struct {
	rel  string // slash path below the source; "" for the source itself
	dir  bool
	mode uint32 // permission, setuid, setgid and sticky bits (07777)
	data []byte // a file's content
}

// reader reads copy sources below the repository's root handle, never
// through a symlink, counting what all of them hold together.
type reader struct {
	root    *os.File
	bytes   int64
	entries int
}

// read reads the file or the tree at src: the source first, then (for a
// directory) every entry below it, each directory's names in byte order.
func (r *reader) read(src string) ([]entry, error) {
	var out []entry
	var visit func(rel string) error
	visit = func(rel string) error {
		p := src
		if rel != "" {
			p = path.Join(src, rel)
		}
		if r.entries++; r.entries > maxCopyEntries {
			return fmt.Errorf("the copies hold more than %d files and directories (at %q): copy less, or make the files in a run step", maxCopyEntries, p)
		}
		f, st, err := r.open(p)
		if err != nil {
			return err
		}
		e := entry{rel: rel, mode: st.Mode & 0o7777}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			names, err := f.Readdirnames(-1)
			f.Close()
			if err != nil {
				return fmt.Errorf("cannot list %q: %v", p, errText(err))
			}
			sort.Strings(names)
			e.dir = true
			out = append(out, e)
			for _, n := range names {
				if err := visit(path.Join(rel, n)); err != nil {
					return err
				}
			}
			return nil
		}
		defer f.Close()
		left := maxCopyBytes - r.bytes
		tooBig := fmt.Errorf("the copies hold more than %d MiB (at %q): copy less, or fetch big files from a run step or install them as packages", maxCopyBytes>>20, p)
		if st.Size > left {
			return tooBig
		}
		data, err := io.ReadAll(io.LimitReader(f, left+1))
		if err != nil {
			return fmt.Errorf("cannot read %q: %v", p, errText(err))
		}
		if int64(len(data)) > left {
			return tooBig
		}
		r.bytes += int64(len(data))
		e.data = data
		out = append(out, e)
		return nil
	}
	if err := visit(""); err != nil {
		return nil, err
	}
	return out, nil
}

// open opens p (relative to the root) for reading: no symlink in any
// component, the last included, and only a regular file or a directory.
// The type is taken from a handle that cannot open anything (O_PATH), so a
// FIFO or a device is never opened.
func (r *reader) open(p string) (*os.File, unix.Stat_t, error) {
	var st unix.Stat_t
	h, err := securefs.OpenBeneath(r.root, p, unix.O_PATH, 0)
	if err != nil {
		return nil, st, errors.New(openMsg(r.root, p, err))
	}
	st, err = securefs.Stat(h)
	h.Close()
	if err != nil {
		return nil, st, fmt.Errorf("cannot look at %q: %v", p, errText(err))
	}
	flags := unix.O_RDONLY | unix.O_NONBLOCK
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFDIR:
		flags |= unix.O_DIRECTORY
	case unix.S_IFLNK:
		return nil, st, fmt.Errorf("%q is a symlink; banger copies no symlinks: copy what it points to, or remove it", p)
	default:
		return nil, st, fmt.Errorf("%q is not a regular file or directory (%s); only those are copied: remove it, or copy around it", p, safepath.Kind(unixType(st.Mode)))
	}
	f, err := securefs.OpenBeneath(r.root, p, flags, 0)
	if err != nil {
		return nil, st, errors.New(openMsg(r.root, p, err))
	}
	st2, err := securefs.Stat(f)
	if err != nil || st2.Dev != st.Dev || st2.Ino != st.Ino {
		f.Close()
		return nil, st, fmt.Errorf("%q changed while banger read it: try again", p)
	}
	return f, st2, nil
}

// openMsg says why opening p below dir failed; for a symlink in the path
// it names the link.
func openMsg(dir *os.File, p string, err error) string {
	var errno syscall.Errno
	errors.As(err, &errno)
	switch {
	case errors.Is(err, securefs.ErrUnsafe) && strings.Contains(err.Error(), "symlink"), errno == unix.ELOOP:
		if link := firstSymlink(dir, p); link != "" {
			if link == p {
				return fmt.Sprintf("%q is a symlink; banger follows no symlinks in the repository: name what it points to instead", p)
			}
			return fmt.Sprintf("%q: %q is a symlink; banger follows no symlinks in the repository: name the real path instead", p, link)
		}
		return fmt.Sprintf("%q goes through a symlink; banger follows no symlinks in the repository: name the real path instead", p)
	case errors.Is(err, securefs.ErrUnsafe):
		return fmt.Sprintf("%q leaves the repository: copy only what is inside it", p)
	case errno == unix.ENOENT:
		return fmt.Sprintf("%q does not exist in the repository: create it, or fix the path", p)
	case errno == unix.ENOTDIR:
		return fmt.Sprintf("%q: a component of the path is not a directory: fix the path", p)
	case errno == unix.EACCES:
		return fmt.Sprintf("cannot read %q: permission denied: make it readable", p)
	}
	return fmt.Sprintf("cannot open %q: %v", p, errText(err))
}

// firstSymlink finds the first component of p (below dir) that is a
// symlink, for a message; "" if none is (any more).
func firstSymlink(dir *os.File, p string) string {
	parts := strings.Split(p, "/")
	for i := range parts {
		q := strings.Join(parts[:i+1], "/")
		var st unix.Stat_t
		if unix.Fstatat(int(dir.Fd()), q, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
			return ""
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return q
		}
	}
	return ""
}

// unixType is the fs.FileMode type bits of a Unix st_mode.
func unixType(m uint32) fs.FileMode {
	switch m & unix.S_IFMT {
	case unix.S_IFDIR:
		return fs.ModeDir
	case unix.S_IFLNK:
		return fs.ModeSymlink
	case unix.S_IFIFO:
		return fs.ModeNamedPipe
	case unix.S_IFSOCK:
		return fs.ModeSocket
	case unix.S_IFCHR:
		return fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		return fs.ModeDevice
	}
	return 0
}
