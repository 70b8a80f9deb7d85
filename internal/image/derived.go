package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/store"
)

// Derived images: a repository's .banger/image.toml built on a base image
// (internal/derive builds them in a throwaway VM). Here they are registered,
// found again by content key, and pruned.

// Meta keys of a derived image.
const (
	metaDerivedKey  = "derived_key"  // imagespec key: base identity + the file's content
	metaDerivedFrom = "derived_from" // the base image's name
	metaDerivedFile = "derived_file" // the .banger/image.toml it came from
)

// FindDerived returns the image registered under name when it was built
// from key and its root filesystem is still there.
func (s *Service) FindDerived(ctx context.Context, name, key string) (api.Image, bool) {
	im, err := s.Store.GetImage(ctx, name)
	if err != nil || im.Meta[metaDerivedKey] != key {
		return api.Image{}, false
	}
	if _, err := os.Stat(im.Rootfs); err != nil {
		return api.Image{}, false
	}
	return s.toAPI(ctx, im), true
}

// DerivedParams registers a derived image.
type DerivedParams struct {
	Name     string // the derived image's name
	Key      string
	Base     Resolved // what it was built on (its kernel is the image's)
	BaseName string
	File     string // the .banger/image.toml
	Rootfs   string // the build VM's root disk, copied (reflinked where possible)
}

// RegisterDerived copies p.Rootfs into images/<name>/ and registers it,
// replacing an older build of the same name (VMs keep their own copies).
func (s *Service) RegisterDerived(ctx context.Context, p DerivedParams) (api.Image, error) {
	l := s.lock(p.Name)
	l.Lock()
	defer l.Unlock()
	if builtins[p.Name] != nil {
		return api.Image{}, errdefs.BadRequestf("%q is a built-in image's name", p.Name)
	}
	old, oldErr := s.Store.GetImage(ctx, p.Name)
	if oldErr == nil && old.Meta[metaDerivedKey] == "" {
		return api.Image{}, errdefs.AlreadyExistsf("image %s exists and is not a derived image; rename the repository's directory or delete that image", p.Name)
	}
	idir := filepath.Join(s.Layout.ImagesDir(), p.Name)
	dst := filepath.Join(idir, "rootfs.ext4")
	// A copy, never a link: the build VM's disk is root's VMM's to write
	// should that VM ever be started again.
	if err := publishFile(p.Rootfs, dst, false); err != nil {
		return api.Image{}, fmt.Errorf("derived image %s: %w", p.Name, err)
	}
	// The work seed is the base's /root (the build VM's /root was its own
	// work disk): made again from this rootfs on first use.
	os.Remove(filepath.Join(idir, workSeedFile))
	// Nanoseconds: prune keeps the newest build of each repository.
	now := time.Now().UTC().Format(time.RFC3339Nano)
	im := store.ImageRecord{ID: newID(), Name: p.Name, Rootfs: dst, KernelID: p.Base.Kernel.ID, Managed: true, CreatedAt: now,
		Meta: map[string]string{
			metaSource:      fmt.Sprintf("derived from %s by %s", p.BaseName, p.File),
			metaDerivedKey:  p.Key,
			metaDerivedFrom: p.BaseName,
			metaDerivedFile: p.File,
		}}
	if init := p.Base.Image.Meta[metaInit]; init != "" {
		im.Meta[metaInit] = init
	}
	var err error
	if oldErr == nil {
		im.ID = old.ID
		err = s.Store.UpdateImage(ctx, im)
	} else {
		err = s.Store.PutImage(ctx, im)
	}
	if err != nil {
		return api.Image{}, err
	}
	s.Log.Info("derived image registered", "image", p.Name, "base", p.BaseName, "key", p.Key)
	return s.toAPI(ctx, im), nil
}

// allocated is the space a file takes on disk.
func allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// cloneInto copies src to a new file dst, reflinked where the filesystem
// can, sparse otherwise.
func cloneInto(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := disk.CloneFile(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// pruneDerived removes derived images no VM uses, except the newest of
// each source file (the one `vm run` would use next).
func (s *Service) pruneDerived(ctx context.Context, dryRun bool) (names []string, freed int64, err error) {
	ims, err := s.Store.ListImages(ctx)
	if err != nil {
		return nil, 0, err
	}
	var derived []store.ImageRecord
	for _, im := range ims {
		if im.Meta[metaDerivedKey] != "" {
			derived = append(derived, im)
		}
	}
	sort.Slice(derived, func(i, j int) bool { return derived[i].CreatedAt > derived[j].CreatedAt })
	newest := map[string]bool{}
	for _, im := range derived {
		f := im.Meta[metaDerivedFile]
		if !newest[f] {
			newest[f] = true
			continue
		}
		users, err := s.Store.VMsUsingImage(ctx, im.ID)
		if err != nil {
			return names, freed, err
		}
		if len(users) > 0 {
			continue
		}
		var size int64
		if fi, err := os.Stat(im.Rootfs); err == nil {
			size = allocated(fi)
		}
		if !dryRun {
			if err := s.Delete(ctx, im.Name); err != nil {
				if errors.Is(err, errdefs.ErrNotFound) {
					continue
				}
				return names, freed, err
			}
		}
		names = append(names, im.Name)
		freed += size
	}
	return names, freed, nil
}
