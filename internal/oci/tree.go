package oci

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/banger-dev/banger/internal/ext4"
)

// removeAll deletes key and everything below it, on disk and in Owners.
func (t *Tree) removeAll(key string) error {
	full := t.abs(key)
	fi, err := os.Lstat(full)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			delete(t.Owners, key)
			return nil
		}
		return err
	}
	if fi.IsDir() {
		err := filepath.WalkDir(full, func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			delete(t.Owners, t.keyOf(p))
			return nil
		})
		if err != nil {
			return err
		}
	}
	delete(t.Owners, key)
	return os.RemoveAll(full)
}

func joinKey(parent, base string) string {
	if parent == "/" {
		return "/" + base
	}
	return parent + "/" + base
}

// abs maps a key to the host path.
func (t *Tree) abs(key string) string {
	return filepath.Join(t.Dir, filepath.FromSlash(key))
}

// keyOf maps a host path inside Dir to its key.
func (t *Tree) keyOf(p string) string {
	rel, err := filepath.Rel(t.Dir, p)
	if err != nil || rel == "." {
		return "/"
	}
	return "/" + filepath.ToSlash(rel)
}

// walk resolves rel inside the tree, one component at a time with Lstat:
// symlinks are followed (absolute targets are relative to Dir, the last
// component only when followLast), ".." above the root is refused. Missing
// components are created as root-owned 0755 directories when mkdir is set
// (and reported to it), otherwise the error wraps fs.ErrNotExist. It returns
// the key of the resolved entry; every component before the last is a real
// directory.
func (t *Tree) walk(rel string, followLast bool, mkdir func(key string)) (string, error) {
	var cur []string
	todo := splitPath(rel)
	hops := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		if c == ".." {
			if len(cur) == 0 {
				return "", fmt.Errorf("%s: %w", rel, errEscape)
			}
			cur = cur[:len(cur)-1]
			continue
		}
		key := "/" + strings.Join(append(cur, c), "/")
		full := t.abs(key)
		last := len(todo) == 0
		fi, err := os.Lstat(full)
		if errors.Is(err, fs.ErrNotExist) && mkdir != nil {
			if err := os.Mkdir(full, 0o755); err != nil {
				return "", err
			}
			t.Owners[key] = Owner{Mode: fs.ModeDir | 0o755}
			mkdir(key)
			cur = append(cur, c)
			continue
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", key, err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 && (!last || followLast) {
			if hops++; hops > maxSymlinkHops {
				return "", fmt.Errorf("%s: %w", rel, errLoop)
			}
			target, err := os.Readlink(full)
			if err != nil {
				return "", err
			}
			if strings.HasPrefix(target, "/") {
				cur = cur[:0]
			}
			todo = append(splitPath(target), todo...)
			continue
		}
		if !last && !fi.IsDir() {
			return "", fmt.Errorf("%s: %w", key, syscall.ENOTDIR)
		}
		cur = append(cur, c)
	}
	return "/" + strings.Join(cur, "/"), nil
}

// resolveDir resolves rel to a directory of the tree, creating missing
// components when mkdir is set.
func (t *Tree) resolveDir(rel string, mkdir func(key string)) (string, error) {
	key, err := t.walk(rel, true, mkdir)
	if err != nil {
		return "", err
	}
	fi, err := os.Lstat(t.abs(key))
	if err != nil {
		return "", err
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("%s: %w", key, syscall.ENOTDIR)
	}
	return key, nil
}

func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

// cleanRel validates a caller-supplied path and splits it into its parent
// and base name.
func cleanRel(rel string) (dir, base string, err error) {
	if err := ext4.CheckName(rel); err != nil {
		return "", "", fmt.Errorf("%q: %w", rel, err)
	}
	c := path.Clean("/" + rel)
	if c == "/" {
		return "", "", fmt.Errorf("%q: is the root", rel)
	}
	dir, base = path.Split(c)
	return dir, base, nil
}

// prepareAdd resolves the parent of rel (creating it) and clears the way for
// a new non-directory entry.
func (t *Tree) prepareAdd(rel string) (string, error) {
	dir, base, err := cleanRel(rel)
	if err != nil {
		return "", err
	}
	parent, err := t.resolveDir(dir, func(string) {})
	if err != nil {
		return "", err
	}
	key := joinKey(parent, base)
	fi, err := os.Lstat(t.abs(key))
	switch {
	case err == nil && fi.IsDir():
		return "", fmt.Errorf("%s: is a directory", key)
	case err == nil:
		if fi.Mode().IsRegular() && nlink(fi) <= 1 {
			t.Bytes -= fi.Size()
			t.Inodes--
		}
		if err := t.removeAll(key); err != nil {
			return "", err
		}
	case !errors.Is(err, fs.ErrNotExist):
		return "", err
	}
	return key, nil
}

// AddFile writes a root-owned regular file at rel (relative to the tree
// root; a leading "/" is allowed), replacing any non-directory there and
// creating missing parents as root-owned 0755 directories. Symlinked
// parents are followed inside the tree. mode may carry setuid, setgid and
// sticky.
func (t *Tree) AddFile(rel string, mode fs.FileMode, data []byte) error {
	key, err := t.prepareAdd(rel)
	if err != nil {
		return err
	}
	if err := writeFile(t.abs(key), diskPerm(mode, false), bytes.NewReader(data)); err != nil {
		return err
	}
	t.Owners[key] = Owner{Mode: mode & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)}
	t.Bytes += int64(len(data))
	t.Inodes++
	return nil
}

// AddSymlink creates a root-owned symlink at rel pointing to target (stored
// as is), replacing any non-directory there.
func (t *Tree) AddSymlink(rel, target string) error {
	if target == "" || strings.IndexByte(target, 0) >= 0 {
		return fmt.Errorf("symlink %q: invalid target %q", rel, target)
	}
	key, err := t.prepareAdd(rel)
	if err != nil {
		return err
	}
	if err := os.Symlink(target, t.abs(key)); err != nil {
		return err
	}
	t.Owners[key] = Owner{Mode: fs.ModeSymlink | 0o777}
	t.Inodes++
	return nil
}

// Has reports whether rel exists in the tree. Symlinked parents are
// followed inside the tree, the last component is not.
func (t *Tree) Has(rel string) bool {
	if path.Clean("/"+rel) == "/" {
		return ext4.CheckName(rel) == nil
	}
	dir, base, err := cleanRel(rel)
	if err != nil {
		return false
	}
	parent, err := t.resolveDir(dir, nil)
	if err != nil {
		return false
	}
	_, err = os.Lstat(t.abs(joinKey(parent, base)))
	return err == nil
}

// ReadFile reads the regular file at rel, following symlinks inside the tree
// as the guest would (absolute targets are relative to the tree root), e.g.
// /etc/os-release -> ../usr/lib/os-release. Targets resolving above the root
// are refused.
func (t *Tree) ReadFile(rel string) ([]byte, error) {
	if err := ext4.CheckName(rel); err != nil {
		return nil, fmt.Errorf("%q: %w", rel, err)
	}
	key, err := t.walk(rel, true, nil)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(t.abs(key), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", key)
	}
	return io.ReadAll(f)
}

func nlink(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Nlink)
	}
	return 1
}

// treeStats is what sizing a filesystem for the tree needs.
type treeStats struct {
	bytes  int64 // regular file sizes, hardlinks once
	alloc  int64 // the same rounded to 4 KiB blocks, plus directory and long-symlink blocks
	inodes int64
}

// recount walks Dir, refreshes Bytes and Inodes, gives entries missing from
// Owners a root owner and drops Owners entries that are not on disk.
func (t *Tree) recount() (treeStats, error) {
	var s treeStats
	seen := make(map[string]bool, len(t.Owners))
	inodes := map[[2]uint64]bool{}
	err := filepath.WalkDir(t.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		key := t.keyOf(p)
		seen[key] = true
		if _, ok := t.Owners[key]; !ok {
			t.Owners[key] = Owner{Mode: fi.Mode().Type() | fi.Mode().Perm()}
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 && !fi.IsDir() {
			id := [2]uint64{uint64(st.Dev), st.Ino}
			if inodes[id] {
				return nil
			}
			inodes[id] = true
		}
		s.inodes++
		switch {
		case fi.Mode().IsRegular():
			s.bytes += fi.Size()
			s.alloc += (fi.Size() + 4095) &^ 4095
		case fi.IsDir():
			s.alloc += 4096
		case fi.Mode()&fs.ModeSymlink != 0 && fi.Size() >= 60:
			s.alloc += 4096
		}
		return nil
	})
	if err != nil {
		return s, err
	}
	for k := range t.Owners {
		if !seen[k] {
			delete(t.Owners, k)
		}
	}
	t.Bytes, t.Inodes = s.bytes, s.inodes
	return s, nil
}
