package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/catalog"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/store"
)

// ext4Magic is at byte 1080 of an ext2/3/4 filesystem.
var ext4Magic = []byte{0x53, 0xef}

func checkExt4(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, 2)
	if _, err := f.ReadAt(b, 1080); err != nil || b[0] != ext4Magic[0] || b[1] != ext4Magic[1] {
		return fmt.Errorf("%s is not an ext4 filesystem image", path)
	}
	return nil
}

func checkFile(flag, path string) error {
	if !filepath.IsAbs(path) {
		return errdefs.BadRequestf("%s %q must be an absolute path", flag, path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return errdefs.BadRequestf("%s %s: %v", flag, path, errors.Unwrap(err))
	}
	if !fi.Mode().IsRegular() {
		return errdefs.BadRequestf("%s %s is not a regular file", flag, path)
	}
	return nil
}

// Register records an existing ext4 root filesystem as an unmanaged image:
// banger uses the file where it is and never deletes it. It boots a
// registered kernel (Kernel) or the given vmlinux/initrd, registered as
// kernel "<name>-kernel".
func (s *Service) Register(ctx context.Context, p api.ImageRegisterParams) (api.Image, error) {
	if !catalog.SafeEntryName(p.Name) {
		return api.Image{}, errdefs.BadRequestf("invalid image name %q: use lower-case letters, digits, '.', '_' and '-'", p.Name)
	}
	if builtins[p.Name] != nil {
		return api.Image{}, errdefs.BadRequestf("%s is a built-in image name; choose another", p.Name)
	}
	if p.Kernel != "" && p.Vmlinux != "" {
		return api.Image{}, errdefs.BadRequestf("--kernel and --vmlinux are mutually exclusive: name a registered kernel, or give the files")
	}
	if p.Initrd != "" && p.Vmlinux == "" {
		return api.Image{}, errdefs.BadRequestf("--initrd needs --vmlinux")
	}
	if p.Init != "" && !filepath.IsAbs(p.Init) {
		return api.Image{}, errdefs.BadRequestf("--init %q must be an absolute path inside the image", p.Init)
	}
	if err := checkFile("--rootfs", p.Rootfs); err != nil {
		return api.Image{}, err
	}
	if err := checkExt4(p.Rootfs); err != nil {
		return api.Image{}, errdefs.BadRequestf("--rootfs: %v", err)
	}
	l := s.lock(p.Name)
	l.Lock()
	defer l.Unlock()
	if _, err := s.Store.GetImage(ctx, p.Name); err == nil {
		return api.Image{}, errdefs.AlreadyExistsf("an image named %s already exists", p.Name)
	}
	var k store.KernelRecord
	var err error
	switch {
	case p.Vmlinux != "":
		for _, ff := range [][2]string{{"--vmlinux", p.Vmlinux}, {"--initrd", p.Initrd}} {
			flag, f := ff[0], ff[1]
			if f != "" {
				if err := checkFile(flag, f); err != nil {
					return api.Image{}, err
				}
			}
		}
		k = store.KernelRecord{ID: "k-" + p.Name + "-kernel", Name: p.Name + "-kernel", Vmlinux: p.Vmlinux, Initrd: p.Initrd,
			CreatedAt: time.Now().UTC().Format(time.RFC3339), Meta: map[string]string{metaSource: "registered with image " + p.Name}}
		if _, err := s.Store.GetKernel(ctx, k.Name); err == nil {
			return api.Image{}, errdefs.AlreadyExistsf("a kernel named %s already exists: pass --kernel %s", k.Name, k.Name)
		}
		if err := s.Store.PutKernel(ctx, k); err != nil {
			return api.Image{}, err
		}
	case p.Kernel != "":
		if k, err = s.Store.GetKernel(ctx, p.Kernel); err != nil {
			return api.Image{}, err
		}
	default:
		if k, _, err = s.ensureBuiltinKernel(ctx, nil); err != nil {
			return api.Image{}, err
		}
	}
	im := store.ImageRecord{ID: newID(), Name: p.Name, Rootfs: p.Rootfs, KernelID: k.ID, Managed: false,
		CreatedAt: time.Now().UTC().Format(time.RFC3339), Meta: map[string]string{metaSource: "registered " + p.Rootfs}}
	if p.Init != "" {
		im.Meta[metaInit] = p.Init
	}
	if err := s.Store.PutImage(ctx, im); err != nil {
		if p.Vmlinux != "" {
			_ = s.Store.DeleteKernel(context.Background(), k.ID)
		}
		return api.Image{}, err
	}
	s.Log.Info("image registered", "image", p.Name, "rootfs", p.Rootfs, "kernel", k.Name)
	return s.toAPI(ctx, im), nil
}

// Promote copies an unmanaged image's root filesystem (and its unmanaged
// kernel's files) under the state dir, so the originals may go away.
func (s *Service) Promote(ctx context.Context, name string) (api.Image, error) {
	l := s.lock(name)
	l.Lock()
	defer l.Unlock()
	im, err := s.Store.GetImage(ctx, name)
	if err != nil {
		return api.Image{}, err
	}
	if im.Managed {
		return api.Image{}, errdefs.BadRequestf("image %s is already managed by banger", name)
	}
	dir := filepath.Join(s.Layout.ImagesDir(), name+"-"+newID()[:8])
	staging, err := os.MkdirTemp(stagingRoot(s.Layout.ImagesDir()), name+"-")
	if err != nil {
		return api.Image{}, err
	}
	defer os.RemoveAll(staging)
	if _, err := disk.CloneRootfs(im.Rootfs, filepath.Join(staging, "rootfs.ext4")); err != nil {
		return api.Image{}, fmt.Errorf("promote %s: copy %s: %w", name, im.Rootfs, err)
	}
	_ = os.Chmod(filepath.Join(staging, "rootfs.ext4"), 0o444)
	k, err := s.Store.GetKernel(ctx, im.KernelID)
	if err != nil {
		return api.Image{}, err
	}
	kdir := ""
	if s.managedDir(s.Layout.KernelsDir(), k.Vmlinux) == "" {
		kdir = filepath.Join(s.Layout.KernelsDir(), k.Name)
		nk := k
		nk.Vmlinux = filepath.Join(kdir, "vmlinux")
		if err := publish(k.Vmlinux, nk.Vmlinux); err != nil {
			return api.Image{}, err
		}
		if k.Initrd != "" {
			nk.Initrd = filepath.Join(kdir, "initrd.img")
			if err := publish(k.Initrd, nk.Initrd); err != nil {
				os.RemoveAll(kdir)
				return api.Image{}, err
			}
		}
		if err := s.Store.PutKernel(ctx, nk); err != nil {
			os.RemoveAll(kdir)
			return api.Image{}, err
		}
	}
	if err := os.Rename(staging, dir); err != nil {
		return api.Image{}, err
	}
	old := im
	im.Rootfs, im.Managed = filepath.Join(dir, "rootfs.ext4"), true
	im.Meta[metaSource] = "promoted from " + old.Rootfs
	if err := s.Store.UpdateImage(ctx, im); err != nil {
		os.RemoveAll(dir)
		return api.Image{}, err
	}
	s.Log.Info("image promoted", "image", name, "rootfs", im.Rootfs, "kernel_copied", kdir != "")
	return s.toAPI(ctx, im), nil
}
