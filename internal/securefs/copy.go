package securefs

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// CopyTreeTo copies the tree at src (a root-only path: nobody else can
// change it while it is read) to a new entry name below the handle dst,
// which may be a directory another user owns, and gives every copied entry
// to uid:gid. Every entry is created relative to a handle opened without
// following links, exclusively, so nothing the other user does meanwhile
// can send a write outside dst. The copy is built under a temporary name
// and renamed into place at the end; if name already exists, the copy is
// removed and nothing is changed. copyFile copies one open regular file
// into an open empty one (a reflink or a sparse copy).
func CopyTreeTo(src string, dst *os.File, name string, uid, gid int, copyFile func(out, in *os.File) error) (err error) {
	if err := CheckRootOnly(src); err != nil {
		return err
	}
	tmp := ".handover-" + name
	if err := RemoveBeneath(dst, tmp); err != nil {
		return err
	}
	if err := unix.Mkdirat(int(dst.Fd()), tmp, 0o700); err != nil {
		return &fs.PathError{Op: "mkdir", Path: filepath.Join(dst.Name(), tmp), Err: err}
	}
	defer func() {
		if err != nil {
			_ = RemoveBeneath(dst, tmp)
		}
	}()
	top, err := OpenBeneath(dst, tmp, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer top.Close()
	dirs := map[string]*os.File{".": top}
	defer func() {
		for k, d := range dirs {
			if k != "." {
				d.Close()
			}
		}
	}()
	err = filepath.WalkDir(src, func(p string, e fs.DirEntry, werr error) error {
		if werr != nil {
			return werr
		}
		rel, _ := filepath.Rel(src, p)
		if rel == "." {
			return nil
		}
		parent := dirs[filepath.Dir(rel)]
		if parent == nil {
			return fmt.Errorf("copy %s: parent of %s not copied", src, rel)
		}
		base := filepath.Base(rel)
		fi, err := e.Info()
		if err != nil {
			return err
		}
		mode := uint32(fi.Mode().Perm())
		switch {
		case e.IsDir():
			if err := unix.Mkdirat(int(parent.Fd()), base, mode|0o700); err != nil {
				return &fs.PathError{Op: "mkdir", Path: rel, Err: err}
			}
			d, err := OpenBeneath(parent, base, unix.O_RDONLY|unix.O_DIRECTORY, 0)
			if err != nil {
				return err
			}
			dirs[rel] = d
			if err := d.Chmod(fi.Mode().Perm()); err != nil {
				return err
			}
			return d.Chown(uid, gid)
		case fi.Mode().IsRegular():
			in, err := os.Open(p)
			if err != nil {
				return err
			}
			defer in.Close()
			out, err := CreateBeneath(parent, base, unix.O_RDWR, mode)
			if err != nil {
				return err
			}
			err = copyFile(out, in)
			if err == nil {
				err = out.Chown(uid, gid)
			}
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			return err
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := unix.Symlinkat(target, int(parent.Fd()), base); err != nil {
				return &fs.PathError{Op: "symlink", Path: rel, Err: err}
			}
			return ChownBeneath(parent, base, uid, gid)
		}
		return nil // sockets, devices: not part of a build
	})
	if err != nil {
		return err
	}
	if err := top.Chmod(0o755); err != nil {
		return err
	}
	if err := top.Chown(uid, gid); err != nil {
		return err
	}
	if err := unix.Renameat2(int(dst.Fd()), tmp, int(dst.Fd()), name, unix.RENAME_NOREPLACE); err != nil {
		if err == unix.EEXIST {
			return RemoveBeneath(dst, tmp)
		}
		return &fs.PathError{Op: "rename", Path: filepath.Join(dst.Name(), name), Err: err}
	}
	return nil
}

// OpenOwnedDir opens base/rel with no symlink in any component, making
// each missing component of rel (relative to handles, owned by uid:gid);
// base and every component must be owned by uid.
func OpenOwnedDir(base, rel string, uid, gid int) (*os.File, error) {
	d, err := OpenNoFollow(base, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	if err := ownedBy(d, uid); err != nil {
		d.Close()
		return nil, err
	}
	if rel == "." || rel == "" {
		return d, nil
	}
	for _, part := range splitPath(rel) {
		if err := unix.Mkdirat(int(d.Fd()), part, 0o755); err == nil {
			_ = unix.Fchownat(int(d.Fd()), part, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
		}
		next, err := OpenBeneath(d, part, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		d.Close()
		if err != nil {
			return nil, err
		}
		if err := ownedBy(next, uid); err != nil {
			next.Close()
			return nil, err
		}
		d = next
	}
	return d, nil
}

func ownedBy(f *os.File, uid int) error {
	st, err := Stat(f)
	if err != nil {
		return err
	}
	if int(st.Uid) != uid {
		return unsafef("%s is owned by uid %d, not uid %d", f.Name(), st.Uid, uid)
	}
	return nil
}

func splitPath(rel string) []string {
	var out []string
	for _, p := range strings.Split(filepath.Clean(rel), "/") {
		if p != "" && p != "." {
			out = append(out, p)
		}
	}
	return out
}
