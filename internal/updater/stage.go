package updater

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/banger-dev/banger/internal/trust"
)

const nofollow = syscall.O_NOFOLLOW

// Stage extracts the gzip'd tarball at tarballPath into a fresh stageDir and
// returns name → staged path for each name in want. The archive's entries
// must be exactly want: regular files at the archive root, each once, with no
// extra or missing entry, no directory, symlink, hardlink, device or other
// special entry, and no absolute or ".." path. Their total size is capped by
// MaxStagedBytes. Files are written 0755 with O_EXCL|O_NOFOLLOW and synced.
//
// stageDir must be an absolute path; whatever is there is removed first (it
// is Stage's to own). On any refusal or error stageDir is removed again.
func Stage(tarballPath, stageDir string, want []string) (staged map[string]string, err error) {
	if err := checkWant(want); err != nil {
		return nil, err
	}
	dir := filepath.Clean(stageDir)
	if !filepath.IsAbs(dir) || dir == "/" {
		return nil, fmt.Errorf("stage: stage dir %q must be an absolute path other than /", stageDir)
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("stage: clear %s: %w", dir, err)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, fmt.Errorf("stage: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("stage: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
			staged = nil
		}
	}()

	f, err := os.Open(tarballPath)
	if err != nil {
		return nil, fmt.Errorf("stage: %w", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, trust.Refuse(ErrUnsafeArchive, "release tarball %s is not gzip: %v", filepath.Base(tarballPath), err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)

	staged = map[string]string{}
	var total int64
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, trust.Refuse(ErrUnsafeArchive, "release tarball is not a valid tar archive: %v", err)
		}
		name := hdr.Name
		if err := checkEntry(hdr, want); err != nil {
			return nil, err
		}
		if _, dup := staged[name]; dup {
			return nil, trust.Refuse(ErrUnsafeArchive, "release tarball has %q twice", name)
		}
		if hdr.Size < 0 || total+hdr.Size > MaxStagedBytes {
			return nil, trust.Refuse(ErrUnsafeArchive, "release tarball unpacks to more than %d bytes", MaxStagedBytes)
		}
		total += hdr.Size
		dst := filepath.Join(dir, name)
		if err := writeStaged(dst, tr, hdr.Size); err != nil {
			return nil, fmt.Errorf("stage %s: %w", name, err)
		}
		staged[name] = dst
	}
	// Read the gzip stream to its end so its CRC and length are checked.
	if _, err := io.Copy(io.Discard, io.LimitReader(zr, 1<<20)); err != nil {
		return nil, trust.Refuse(ErrUnsafeArchive, "release tarball is corrupt: %v", err)
	}
	var missing []string
	for _, w := range want {
		if _, ok := staged[w]; !ok {
			missing = append(missing, w)
		}
	}
	if len(missing) > 0 {
		return nil, trust.Refuse(ErrUnsafeArchive, "release tarball is missing %s", strings.Join(missing, ", "))
	}
	if err := syncDir(dir); err != nil {
		return nil, fmt.Errorf("stage: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, fmt.Errorf("stage: %w", err)
	}
	return staged, nil
}

func checkWant(want []string) error {
	if len(want) == 0 {
		return errors.New("stage: no expected binaries given")
	}
	seen := map[string]bool{}
	for _, w := range want {
		if w == "" || w == "." || w == ".." || strings.ContainsAny(w, "/\\\x00") {
			return fmt.Errorf("stage: expected binary name %q is not a plain file name", w)
		}
		if seen[w] {
			return fmt.Errorf("stage: expected binary %q listed twice", w)
		}
		seen[w] = true
	}
	return nil
}

// checkEntry refuses anything but a regular file named exactly one of want.
// The order of checks gives the most telling message for each kind of attack.
func checkEntry(hdr *tar.Header, want []string) error {
	name := hdr.Name
	switch {
	case strings.HasPrefix(name, "/"):
		return trust.Refuse(ErrUnsafeArchive, "release tarball entry %q is an absolute path", name)
	case slices.Contains(strings.Split(strings.ReplaceAll(name, "\\", "/"), "/"), ".."):
		return trust.Refuse(ErrUnsafeArchive, "release tarball entry %q escapes the archive (path traversal)", name)
	}
	switch hdr.Typeflag {
	case tar.TypeReg: // archive/tar already maps the legacy TypeRegA here
	case tar.TypeDir:
		return trust.Refuse(ErrUnsafeArchive, "release tarball has a directory entry %q; only regular files are allowed", name)
	case tar.TypeSymlink:
		return trust.Refuse(ErrUnsafeArchive, "release tarball entry %q is a symlink (to %q); only regular files are allowed", name, hdr.Linkname)
	case tar.TypeLink:
		return trust.Refuse(ErrUnsafeArchive, "release tarball entry %q is a hardlink (to %q); only regular files are allowed", name, hdr.Linkname)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return trust.Refuse(ErrUnsafeArchive, "release tarball entry %q is a device or fifo; only regular files are allowed", name)
	default:
		return trust.Refuse(ErrUnsafeArchive, "release tarball entry %q has type %q; only regular files are allowed", name, string(hdr.Typeflag))
	}
	if !slices.Contains(want, name) {
		if strings.Contains(name, "/") {
			return trust.Refuse(ErrUnsafeArchive, "release tarball entry %q is not at the archive root", name)
		}
		return trust.Refuse(ErrUnsafeArchive, "release tarball has unexpected entry %q (want exactly %s)", name, strings.Join(want, ", "))
	}
	return nil
}

func writeStaged(dst string, r io.Reader, size int64) (err error) {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|nofollow, 0o700)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	n, err := io.Copy(out, io.LimitReader(r, size))
	if err != nil {
		return trust.Refuse(ErrUnsafeArchive, "release tarball is truncated or corrupt: %v", err)
	}
	if n != size {
		return trust.Refuse(ErrUnsafeArchive, "release tarball entry is truncated: %d of %d bytes", n, size)
	}
	if err := out.Chmod(0o755); err != nil { // explicit: independent of umask
		return err
	}
	return out.Sync()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
