package sdharness

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// Files inside the instance are reached through /proc/PID/root. A plain open of
// /proc/PID/root/a/b would resolve an absolute symlink at a/ against the *host's* root and
// could write to the host; openat2(RESOLVE_IN_ROOT) resolves every component, symlinks and
// ".." included, as if /proc/PID/root were "/".

const resolveFlags = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS

func (s *System) openRoot() (int, error) {
	return unix.Open(s.Root(), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
}

func insideRel(inside string) (string, error) {
	if !path.IsAbs(inside) {
		return "", fmt.Errorf("%q: want an absolute path inside the instance", inside)
	}
	rel := strings.TrimPrefix(path.Clean(inside), "/")
	if rel == "" {
		return "", fmt.Errorf("%q: not a file", inside)
	}
	return rel, nil
}

func openat2(dirfd int, rel string, flags uint64, mode uint32) (int, error) {
	for {
		fd, err := unix.Openat2(dirfd, rel, &unix.OpenHow{Flags: flags | unix.O_CLOEXEC, Mode: uint64(mode), Resolve: resolveFlags})
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		return fd, err
	}
}

// mkdirAll creates rel's directories (mode 0755) below root, resolving each inside the root.
func mkdirAll(root int, rel string) error {
	if rel == "." || rel == "" {
		return nil
	}
	fd, err := openat2(root, rel, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err == nil {
		unix.Close(fd)
		return nil
	}
	if err != unix.ENOENT {
		return fmt.Errorf("/%s: %w", rel, err)
	}
	parent := path.Dir(rel)
	if err := mkdirAll(root, parent); err != nil {
		return err
	}
	pfd := root
	if parent != "." {
		if pfd, err = openat2(root, parent, unix.O_PATH|unix.O_DIRECTORY, 0); err != nil {
			return fmt.Errorf("/%s: %w", parent, err)
		}
		defer unix.Close(pfd)
	}
	if err := unix.Mkdirat(pfd, path.Base(rel), 0o755); err != nil && err != unix.EEXIST {
		return fmt.Errorf("mkdir /%s: %w", rel, err)
	}
	return nil
}

// WriteFile writes data to the path inside the instance (creating missing parent directories
// with mode 0755, truncating an existing file, then setting mode exactly). Unless the path is
// below a read-write Bind, the data lands in the overlay's tmpfs, never on the host.
func (s *System) WriteFile(inside string, data []byte, mode os.FileMode) error {
	rel, err := insideRel(inside)
	if err != nil {
		return err
	}
	root, err := s.openRoot()
	if err != nil {
		return err
	}
	defer unix.Close(root)
	if err := mkdirAll(root, path.Dir(rel)); err != nil {
		return fmt.Errorf("write %s: %w", inside, err)
	}
	fd, err := openat2(root, rel, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC, uint32(mode.Perm()))
	if err != nil {
		return fmt.Errorf("write %s: %w", inside, err)
	}
	f := os.NewFile(uintptr(fd), inside)
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", inside, err)
	}
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("write %s: %w", inside, err)
	}
	return f.Close()
}

// ReadFile reads the file at the path inside the instance.
func (s *System) ReadFile(inside string) ([]byte, error) {
	rel, err := insideRel(inside)
	if err != nil {
		return nil, err
	}
	root, err := s.openRoot()
	if err != nil {
		return nil, err
	}
	defer unix.Close(root)
	fd, err := openat2(root, rel, unix.O_RDONLY, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: inside, Err: err}
	}
	f := os.NewFile(uintptr(fd), inside)
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil && !errors.Is(err, io.EOF) {
		return b, err
	}
	return b, nil
}
