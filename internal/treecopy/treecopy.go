// Package treecopy moves one file, symlink or directory tree between the
// host and a guest as a tar stream: it is 'banger vm cp'. Pack writes the
// stream from a path; Unpack extracts one below a destination, keeping each
// entry's permission bits and modification time and copying symlinks as
// links. Unpack is written for a hostile sender (the guest, when copying
// out): every entry is created through a directory handle with openat2
// RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS or an *at call on its parent, so no
// name, symlink or race sends a write outside the destination, and the
// bytes and entries of a stream are capped. The guest end is banger-agent's
// "cp" mode (GuestMain), run over SSH. Imported by internal/cli and
// cmd/banger-agent.
package treecopy

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/securefs"
)

// Limits cap what Unpack accepts from a stream.
type Limits struct {
	// MaxBytes caps the regular files' bytes together.
	MaxBytes int64
	// MaxEntries caps the entries (files, directories, links).
	MaxEntries int
}

// DefaultLimits are the caps 'vm cp' uses unless told otherwise.
var DefaultLimits = Limits{MaxBytes: 64 << 30, MaxEntries: 1 << 20}

// maxName caps one entry's name.
const maxName = 4096

// Stats says what a Pack or an Unpack moved.
type Stats struct {
	Files, Dirs, Links int
	Bytes              int64
	// Skipped names what Pack left out: sockets, devices and fifos.
	Skipped []string
}

// Pack writes src (a file, a symlink, not followed, or a directory and all
// below it) to w as a tar stream whose first entry is src's base name.
// counted, when not nil, is told of every file byte written.
func Pack(w io.Writer, src string, counted func(int64)) (Stats, error) {
	var st Stats
	abs, err := filepath.Abs(src)
	if err != nil {
		return st, err
	}
	base := filepath.Base(abs)
	if base == "/" || base == "." {
		return st, fmt.Errorf("%s: cannot copy the root directory; name a directory below it", src)
	}
	fi, err := os.Lstat(abs)
	if err != nil {
		return st, err
	}
	tw := tar.NewWriter(w)
	add := func(p, name string, fi fs.FileInfo) error {
		return packEntry(tw, p, name, fi, &st, counted)
	}
	if err := add(abs, base, fi); err != nil {
		return st, err
	}
	if fi.IsDir() {
		err = filepath.WalkDir(abs, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if p == abs {
				return nil
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(abs, p)
			if err != nil {
				return err
			}
			return add(p, base+"/"+filepath.ToSlash(rel), fi)
		})
		if err != nil {
			return st, err
		}
	}
	return st, tw.Close()
}

func packEntry(tw *tar.Writer, p, name string, fi fs.FileInfo, st *Stats, counted func(int64)) error {
	link := ""
	switch {
	case fi.Mode().IsRegular(), fi.IsDir():
	case fi.Mode()&fs.ModeSymlink != 0:
		l, err := os.Readlink(p)
		if err != nil {
			return err
		}
		link = l
	default:
		st.Skipped = append(st.Skipped, p)
		return nil
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return err
	}
	hdr.Name = name
	if fi.IsDir() {
		hdr.Name += "/"
	}
	hdr.Format = tar.FormatPAX // long names, nanosecond times
	hdr.Uname, hdr.Gname = "", ""
	hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	switch {
	case fi.IsDir():
		st.Dirs++
	case link != "":
		st.Links++
	default:
		st.Files++
		f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		n, err := io.CopyN(tw, &countingReader{r: f, counted: counted}, hdr.Size)
		st.Bytes += n
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%s: shrank while it was copied", p)
			}
			return err
		}
	}
	return nil
}

type countingReader struct {
	r       io.Reader
	counted func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 && c.counted != nil {
		c.counted(int64(n))
	}
	return n, err
}

// Options tune Unpack.
type Options struct {
	Limits Limits
	// KeepSetID keeps setuid and setgid bits (the guest end, running as the
	// guest's root); the host end clears them.
	KeepSetID bool
	// Counted, when not nil, is told of every file byte written.
	Counted func(int64)
}

// Unpack extracts the stream r made by Pack at dst, as cp does: into dst
// when it is a directory; as dst when it does not exist (its parent must)
// or, for a file, when it is a file (replaced). A directory onto a file, a
// missing parent, an entry outside the stream's first one, a name with
// "..", a type other than file, directory or symlink, or a stream past the
// limits is refused with one line; what was extracted before stays.
func Unpack(r io.Reader, dst string, o Options) (Stats, error) {
	if o.Limits == (Limits{}) {
		o.Limits = DefaultLimits
	}
	u := &unpacker{opt: o, tr: tar.NewReader(r)}
	hdr, err := u.tr.Next()
	if errors.Is(err, io.EOF) {
		return u.st, errors.New("the copy stream is empty")
	}
	if err != nil {
		return u.st, fmt.Errorf("reading the copy stream: %w", err)
	}
	top, err := entryName(hdr)
	if err != nil {
		return u.st, err
	}
	if strings.Contains(top, "/") {
		return u.st, fmt.Errorf("the stream's first entry %q is not a single name", top)
	}
	rootDir, newTop, err := placeTop(dst, top, hdr.Typeflag == tar.TypeDir)
	if err != nil {
		return u.st, err
	}
	root, err := os.Open(rootDir)
	if err != nil {
		return u.st, err
	}
	defer root.Close()
	u.root, u.top, u.newTop = root, top, newTop
	for {
		if err := u.entry(hdr); err != nil {
			return u.st, err
		}
		hdr, err = u.tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return u.st, fmt.Errorf("reading the copy stream: %w", err)
		}
	}
	return u.st, u.finishDirs()
}

// placeTop decides where the stream's top entry goes: the directory it is
// created in, and its name there.
func placeTop(dst, top string, topIsDir bool) (dir, name string, err error) {
	fi, err := os.Stat(dst)
	switch {
	case err == nil && fi.IsDir():
		return dst, top, nil
	case err == nil && topIsDir:
		return "", "", fmt.Errorf("cannot copy directory %s onto file %s", top, dst)
	case err == nil:
		return filepath.Dir(dst), filepath.Base(dst), nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", "", err
	case strings.HasSuffix(dst, "/"):
		return "", "", fmt.Errorf("%s: no such directory", dst)
	}
	parent := filepath.Dir(dst)
	if pfi, err := os.Stat(parent); err != nil || !pfi.IsDir() {
		return "", "", fmt.Errorf("%s: no such directory (the parent of %s)", parent, dst)
	}
	return parent, filepath.Base(dst), nil
}

// entryName checks a header's name: relative, clean, no "..", not too long.
func entryName(hdr *tar.Header) (string, error) {
	name := strings.TrimSuffix(hdr.Name, "/")
	switch {
	case len(hdr.Name) > maxName:
		return "", fmt.Errorf("an entry name is %d bytes long, more than %d", len(hdr.Name), maxName)
	case name == "" || strings.ContainsRune(name, 0):
		return "", fmt.Errorf("entry %q: not a file name", hdr.Name)
	case strings.HasPrefix(name, "/") || filepath.Clean(name) != name || name == ".." || strings.HasPrefix(name, "../") || strings.Contains(name, "/../") || name == ".":
		return "", fmt.Errorf("entry %q: not a clean relative name", hdr.Name)
	}
	return name, nil
}

type unpacker struct {
	opt          Options
	tr           *tar.Reader
	root         *os.File
	top, newTop  string
	st           Stats
	entries      int
	dirs         []dirMeta
	bytesWritten int64
}

type dirMeta struct {
	rel   string
	mode  uint32
	mtime time.Time
}

func (u *unpacker) entry(hdr *tar.Header) error {
	name, err := entryName(hdr)
	if err != nil {
		return err
	}
	var rel string
	switch {
	case name == u.top:
		rel = u.newTop
	case strings.HasPrefix(name, u.top+"/"):
		rel = u.newTop + name[len(u.top):]
	default:
		return fmt.Errorf("entry %q is outside %s, the stream's first entry", hdr.Name, u.top)
	}
	if u.entries++; u.entries > u.opt.Limits.MaxEntries {
		return fmt.Errorf("the copy holds more than %d entries, the limit", u.opt.Limits.MaxEntries)
	}
	parent, err := u.openParent(rel)
	if err != nil {
		return err
	}
	defer func() {
		if parent != u.root {
			parent.Close()
		}
	}()
	base := filepath.Base(rel)
	switch hdr.Typeflag {
	case tar.TypeDir:
		return u.dir(parent, rel, base, hdr)
	case tar.TypeReg:
		return u.file(parent, rel, base, hdr)
	case tar.TypeSymlink:
		return u.symlink(parent, rel, base, hdr)
	}
	return fmt.Errorf("entry %q: type %q is not a file, a directory or a symlink", hdr.Name, string(hdr.Typeflag))
}

// openParent opens rel's parent below the root, refusing any symlink on
// the way.
func (u *unpacker) openParent(rel string) (*os.File, error) {
	p := filepath.Dir(rel)
	if p == "." {
		return u.root, nil
	}
	return securefs.OpenBeneath(u.root, p, unix.O_RDONLY|unix.O_DIRECTORY, 0)
}

func (u *unpacker) mode(m int64) uint32 {
	if u.opt.KeepSetID {
		return uint32(m) & 0o7777
	}
	return uint32(m) & 0o1777
}

// existing is what name below dir is now (0 when nothing is there).
func existing(dir *os.File, name string) (uint32, error) {
	var st unix.Stat_t
	err := unix.Fstatat(int(dir.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return 0, nil
	}
	if err != nil {
		return 0, &fs.PathError{Op: "stat", Path: filepath.Join(dir.Name(), name), Err: err}
	}
	return st.Mode & unix.S_IFMT, nil
}

func (u *unpacker) dir(parent *os.File, rel, base string, hdr *tar.Header) error {
	kind, err := existing(parent, base)
	if err != nil {
		return err
	}
	switch kind {
	case 0:
		if err := unix.Mkdirat(int(parent.Fd()), base, 0o700); err != nil {
			return &fs.PathError{Op: "mkdir", Path: filepath.Join(parent.Name(), base), Err: err}
		}
	case unix.S_IFDIR:
	default:
		return fmt.Errorf("%s exists and is not a directory", filepath.Join(u.root.Name(), rel))
	}
	u.st.Dirs++
	u.dirs = append(u.dirs, dirMeta{rel, u.mode(hdr.Mode), hdr.ModTime})
	return nil
}

// clear removes what is at base so a file or a link can take its place; a
// directory there is refused.
func (u *unpacker) clear(parent *os.File, rel, base, what string) error {
	kind, err := existing(parent, base)
	if err != nil || kind == 0 || kind == unix.S_IFREG && what == "file" {
		return err
	}
	if kind == unix.S_IFDIR {
		return fmt.Errorf("cannot replace directory %s with a %s", filepath.Join(u.root.Name(), rel), what)
	}
	if err := unix.Unlinkat(int(parent.Fd()), base, 0); err != nil {
		return &fs.PathError{Op: "unlink", Path: filepath.Join(parent.Name(), base), Err: err}
	}
	return nil
}

func (u *unpacker) file(parent *os.File, rel, base string, hdr *tar.Header) error {
	if hdr.Size < 0 || hdr.Size > u.opt.Limits.MaxBytes-u.bytesWritten {
		return fmt.Errorf("the copy is larger than %d bytes, the limit (at %s)", u.opt.Limits.MaxBytes, hdr.Name)
	}
	if err := u.clear(parent, rel, base, "file"); err != nil {
		return err
	}
	f, err := securefs.OpenBeneath(parent, base, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	n, err := io.CopyN(f, &countingReader{r: u.tr, counted: u.opt.Counted}, hdr.Size)
	u.bytesWritten += n
	u.st.Bytes += n
	if err == nil {
		err = unix.Fchmod(int(f.Fd()), u.mode(hdr.Mode))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(u.root.Name(), rel), err)
	}
	u.st.Files++
	return setTimes(parent, base, hdr.ModTime)
}

func (u *unpacker) symlink(parent *os.File, rel, base string, hdr *tar.Header) error {
	if hdr.Linkname == "" || len(hdr.Linkname) > maxName || strings.ContainsRune(hdr.Linkname, 0) {
		return fmt.Errorf("entry %q: not a symlink target", hdr.Name)
	}
	if err := u.clear(parent, rel, base, "symlink"); err != nil {
		return err
	}
	if err := unix.Symlinkat(hdr.Linkname, int(parent.Fd()), base); err != nil {
		return &fs.PathError{Op: "symlink", Path: filepath.Join(parent.Name(), base), Err: err}
	}
	u.st.Links++
	return setTimes(parent, base, hdr.ModTime)
}

// finishDirs gives the directories their modes and times, deepest first
// (writing into a directory changes its time; a read-only one would refuse
// its own entries).
func (u *unpacker) finishDirs() error {
	for i := len(u.dirs) - 1; i >= 0; i-- {
		d := u.dirs[i]
		parent, err := u.openParent(d.rel)
		if err != nil {
			return err
		}
		base := filepath.Base(d.rel)
		var f *os.File
		if f, err = securefs.OpenBeneath(parent, base, unix.O_RDONLY|unix.O_DIRECTORY, 0); err == nil {
			err = unix.Fchmod(int(f.Fd()), d.mode)
			f.Close()
		}
		if err == nil {
			err = setTimes(parent, base, d.mtime)
		}
		if parent != u.root {
			parent.Close()
		}
		if err != nil {
			return fmt.Errorf("%s: %w", filepath.Join(u.root.Name(), d.rel), err)
		}
	}
	return nil
}

func setTimes(dir *os.File, name string, mtime time.Time) error {
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, unix.NsecToTimespec(mtime.UnixNano())}
	if err := unix.UtimesNanoAt(int(dir.Fd()), name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "utimes", Path: filepath.Join(dir.Name(), name), Err: err}
	}
	return nil
}
