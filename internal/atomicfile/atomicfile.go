// Package atomicfile replaces files so that a reader, or a crash, finds the
// old content or the new, never a mix or nothing. WriteFile (and
// WriteFileAt, relative to an open directory) writes a temporary file beside
// the target, syncs it, renames it over the target and syncs the directory.
// KeepPrevious, RestorePrevious and RemovePrevious are the backup a swap of
// an installed file rolls back to: the file being replaced stays whole as
// <path>.previous until it is put back or dropped.
//
// Anything may import it; it imports nothing of banger's.
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// WriteFile replaces path with data, mode perm (whatever the umask): a
// temporary file in path's directory (".<name>.tmp-<random>") is written,
// synced and renamed over path, then the directory is synced. On failure
// path is untouched and the temporary file is removed. The directory must
// exist.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	dir, err := os.OpenFile(filepath.Dir(path), os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer dir.Close()
	return WriteFileAt(dir, filepath.Base(path), data, perm)
}

// WriteFileAt is WriteFile for the entry name of the open directory dir.
// Nothing is resolved by path again: the temporary file is created in dir
// with O_EXCL|O_NOFOLLOW and renamed with renameat, so a directory swapped
// for a link meanwhile cannot redirect the write.
func WriteFileAt(dir *os.File, name string, data []byte, perm os.FileMode) error {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return fmt.Errorf("atomic write: %q is not a file name", name)
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	tmp := "." + name + ".tmp-" + hex.EncodeToString(rnd[:])
	tmpPath := filepath.Join(dir.Name(), tmp)
	dfd := int(dir.Fd())
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &fs.PathError{Op: "open", Path: tmpPath, Err: err}
	}
	f := os.NewFile(uintptr(fd), tmpPath)
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if rerr := unix.Renameat(dfd, tmp, dfd, name); rerr != nil {
			err = &os.LinkError{Op: "rename", Old: tmpPath, New: filepath.Join(dir.Name(), name), Err: rerr}
		}
	}
	if err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return err
	}
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir.Name(), err)
	}
	return nil
}

// PreviousSuffix names the copy KeepPrevious keeps: <path>.previous.
const PreviousSuffix = ".previous"

// KeepPrevious makes <path>.previous a hard link to path, replacing an
// older one: the file about to be replaced (by WriteFile, which renames
// over it) stays whole, the very same inode, until RestorePrevious puts it
// back or RemovePrevious drops it.
func KeepPrevious(path string) error {
	prev := path + PreviousSuffix
	os.Remove(prev)
	if err := os.Link(path, prev); err != nil {
		return fmt.Errorf("keep %s: %w", prev, err)
	}
	return nil
}

// RestorePrevious renames <path>.previous back over path.
func RestorePrevious(path string) error {
	if err := os.Rename(path+PreviousSuffix, path); err != nil {
		return fmt.Errorf("restore %s from %s%s: %w", path, path, PreviousSuffix, err)
	}
	return nil
}

// RemovePrevious removes <path>.previous; none there is not an error.
func RemovePrevious(path string) error {
	if err := os.Remove(path + PreviousSuffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
