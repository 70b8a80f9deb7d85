package oci

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/banger-dev/banger/internal/ext4"
)

const (
	mib = int64(1) << 20
	// MinExt4Size is the smallest image BuildExt4 makes.
	MinExt4Size = 256 * mib
	// inodeSlack is added to twice the tree's inode count.
	inodeSlack = 16384
	// inodeSize is passed to mkfs (small filesystems would get 128).
	inodeSize = 256
	// mkfsAttempts bounds the retries with a doubled size when the
	// estimate was too small.
	mkfsAttempts = 3
)

// ext4Size returns the image size and inode count for a tree: content*1.5
// plus the inode tables and headroom, at least MinExt4Size, rounded up to a
// MiB; twice the tree's inodes plus slack, and never fewer than mkfs's
// default ratio (one per 16 KiB) would give, so the headroom stays usable.
func ext4Size(s treeStats, headroom int64) (size, inodes int64) {
	headroom = max(headroom, 0)
	content := max(s.bytes, s.alloc)
	size = content + content/2 + headroom + 16*mib
	inodes = max(s.inodes*2+inodeSlack, size/16384)
	size += inodes * inodeSize
	size = max(size, MinExt4Size)
	size = (size + mib - 1) / mib * mib
	return size, inodes
}

// BuildExt4 makes out, a sparse ext4 image holding t, without mounting
// anything: mkfs.ext4 -d copies t.Dir, then one batched debugfs pass sets
// uid, gid and mode on every inode whose copy differs from t.Owners (all of
// them when the tree was extracted by a non-root user); see ext4.Make and
// ext4.SetOwners. The image is sized from the content (see ext4Size) plus
// headroom bytes. out is written through a temporary file in its directory
// and renamed into place, so on failure nothing is left at out.
func BuildExt4(ctx context.Context, t *Tree, out string, headroom int64) (err error) {
	if err := ext4.Check(); err != nil {
		return err
	}
	stats, err := t.recount()
	if err != nil {
		return fmt.Errorf("scanning %s: %w", t.Dir, err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	img, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-*")
	if err != nil {
		return err
	}
	img.Close()
	defer func() {
		if err != nil {
			os.Remove(img.Name())
		}
	}()

	size, inodes := ext4Size(stats, headroom)
	for attempt := 1; ; attempt++ {
		if err := os.Truncate(img.Name(), 0); err != nil {
			return err
		}
		if err := os.Truncate(img.Name(), size); err != nil {
			return err
		}
		err := ext4.Make(ctx, img.Name(), t.Dir, ext4.MkfsOptions{BlockSize: 4096, InodeSize: inodeSize, Inodes: inodes})
		if err == nil {
			break
		}
		if attempt < mkfsAttempts && ext4.OutOfSpace(err) {
			size *= 2
			inodes *= 2
			continue
		}
		return fmt.Errorf("ext4 image of %s (%s, %d inodes): %w", t.Dir, humanBytes(size), inodes, err)
	}
	owners := make(map[string]ext4.Owner, len(t.Owners))
	for k, o := range t.Owners {
		owners[k] = ext4.Owner(o)
	}
	if err := ext4.SetOwners(ctx, img.Name(), t.Dir, owners); err != nil {
		return err
	}
	return os.Rename(img.Name(), out)
}
