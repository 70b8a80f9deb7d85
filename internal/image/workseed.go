package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/banger-dev/banger/internal/ext4"
)

// The work seed: an image's /root (shell dotfiles and the like) as a small
// tar beside its rootfs.ext4. A VM's /root is its own work disk, so without
// the seed the image's /root would be hidden under it; the root helper
// copies the seed into each new work disk.

const workSeedFile = "work-seed.tar"

// workSeedMax bounds a seed: /root is dotfiles, not data.
const workSeedMax = 16 << 20

// workSeed returns the seed of a managed image, making it from the rootfs
// (debugfs, no mount) the first time. "" when the image has nothing in
// /root, is unmanaged, or the seed cannot be made (VMs then start with an
// empty /root, as before).
func (s *Service) workSeed(ctx context.Context, rootfs string) string {
	if s.managedDir(s.Layout.ImagesDir(), rootfs) == "" {
		return ""
	}
	p := filepath.Join(filepath.Dir(rootfs), workSeedFile)
	if fi, err := os.Stat(p); err == nil {
		if fi.Size() == 0 {
			return ""
		}
		return p
	}
	if err := makeWorkSeed(ctx, rootfs, p); err != nil {
		s.Log.Warn("no work seed", "rootfs", rootfs, "error", err)
		return ""
	}
	if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
		return ""
	}
	return p
}

// makeWorkSeed writes dst: /root of rootfs as a tar of directories and
// regular files (no links, no devices), or an empty file when /root is
// empty.
func makeWorkSeed(ctx context.Context, rootfs, dst string) error {
	tmp, err := os.MkdirTemp(filepath.Dir(dst), ".seed-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	// An image without /root gets an empty seed, as one with an empty /root.
	if err := ext4.Rdump(ctx, rootfs, "/root", tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	src := filepath.Join(tmp, "root")
	f, err := os.CreateTemp(filepath.Dir(dst), ".seed-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	tw := tar.NewWriter(f)
	n := 0
	var total int64
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) && p == src {
				return filepath.SkipAll
			}
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if rel == "." || !(d.IsDir() || d.Type().IsRegular()) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if total += fi.Size(); total > workSeedMax {
			return fmt.Errorf("/root holds more than %d MiB; not seeding it", workSeedMax>>20)
		}
		h := &tar.Header{Name: filepath.ToSlash(rel), Mode: int64(fi.Mode().Perm()), Typeflag: tar.TypeReg, Size: fi.Size()}
		if d.IsDir() {
			h.Name += "/"
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		n++
		if d.IsDir() {
			return nil
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		_, err = io.Copy(tw, in)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil && n == 0 {
		err = f.Truncate(0)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Chmod(f.Name(), 0o444); err != nil {
		return err
	}
	return os.Rename(f.Name(), dst)
}
