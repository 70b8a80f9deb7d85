// Package image owns images and kernels: resolving an image name to a root
// filesystem and a kernel, and producing banger's built-in images ("tiny",
// "debian-bookworm") on demand from Debian packages (internal/guestbuild).
// Builds of one name are serialised; later callers get the published result.
package image

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/guestbuild"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
)

// TinyImage is the built-in busybox + dropbear image.
const TinyImage = "tiny"

// DebianImage is the built-in Debian bookworm image (systemd, OpenSSH, git),
// built locally with mmdebstrap; it boots the same kernel as tiny.
const DebianImage = "debian-bookworm"

// builtins can be produced locally when missing: name -> how.
var builtins = map[string]func(context.Context, guestbuild.Options) (guestbuild.Artifacts, error){
	TinyImage:   guestbuild.Ensure,
	DebianImage: guestbuild.EnsureDebian,
}

// Service resolves and registers images.
type Service struct {
	Store  *store.Store
	Layout paths.Layout
	Log    *slog.Logger

	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

// Resolved is what a VM boots from.
type Resolved struct {
	Image  store.ImageRecord
	Kernel store.KernelRecord
}

func (s *Service) lock(name string) *sync.Mutex {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.locks == nil {
		s.locks = map[string]*sync.Mutex{}
	}
	if s.locks[name] == nil {
		s.locks[name] = &sync.Mutex{}
	}
	return s.locks[name]
}

// Known reports whether name is registered or can be built.
func (s *Service) Known(ctx context.Context, name string) error {
	if builtins[name] != nil {
		return nil
	}
	if _, err := s.Store.GetImage(ctx, name); err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			return errdefs.NotFoundf("unknown image %q (available: %s)", name, s.available(ctx))
		}
		return err
	}
	return nil
}

func (s *Service) available(ctx context.Context) string {
	names := map[string]bool{}
	for n := range builtins {
		names[n] = true
	}
	if ims, err := s.Store.ListImages(ctx); err == nil {
		for _, im := range ims {
			names[im.Name] = true
		}
	}
	out := make([]string, 0, len(names))
	for n := range names {
		out = append(out, n)
	}
	sort.Strings(out)
	s2 := ""
	for i, n := range out {
		if i > 0 {
			s2 += ", "
		}
		s2 += n
	}
	return s2
}

// Resolve returns the image and its kernel, building a missing built-in.
func (s *Service) Resolve(ctx context.Context, name string, progress io.Writer) (Resolved, error) {
	if err := s.Known(ctx, name); err != nil {
		return Resolved{}, err
	}
	l := s.lock(name)
	l.Lock()
	defer l.Unlock()
	im, err := s.Store.GetImage(ctx, name)
	if errors.Is(err, errdefs.ErrNotFound) && builtins[name] != nil {
		im, err = s.buildBuiltin(ctx, name, progress)
	}
	if err != nil {
		return Resolved{}, err
	}
	if _, err := os.Stat(im.Rootfs); err != nil {
		return Resolved{}, fmt.Errorf("image %s: root filesystem %s is missing", name, im.Rootfs)
	}
	k, err := s.Store.GetKernel(ctx, im.KernelID)
	if err != nil {
		return Resolved{}, fmt.Errorf("image %s: %w", name, err)
	}
	return Resolved{Image: im, Kernel: k}, nil
}

// buildBuiltin builds (or reuses the cached) guest artifacts of a built-in
// image and publishes them into the state dir: kernels/<version>/ and
// images/<name>/. All built-ins share the kernel record.
func (s *Service) buildBuiltin(ctx context.Context, name string, progress io.Writer) (store.ImageRecord, error) {
	s.Log.Info("building image", "image", name)
	art, err := builtins[name](ctx, guestbuild.Options{CacheDir: s.Layout.CacheDir, Progress: progress})
	if err != nil {
		return store.ImageRecord{}, fmt.Errorf("build image %s: %w", name, err)
	}
	now := time.Now().UTC().Format(time.RFC3339)
	kdir := filepath.Join(s.Layout.KernelsDir(), art.KernelVersion)
	k := store.KernelRecord{
		ID: "k-" + art.KernelVersion, Name: art.KernelVersion, Version: art.KernelVersion,
		Vmlinux: filepath.Join(kdir, "vmlinux"), Vmlinuz: filepath.Join(kdir, "vmlinuz"), Initrd: filepath.Join(kdir, "initrd.img"),
		CreatedAt: now,
	}
	idir := filepath.Join(s.Layout.ImagesDir(), name)
	im := store.ImageRecord{ID: newID(), Name: name, Rootfs: filepath.Join(idir, "rootfs.ext4"), KernelID: k.ID, Managed: true, CreatedAt: now,
		Meta: map[string]string{"source": "guestbuild " + art.Key}}
	for src, dst := range map[string]string{art.Vmlinux: k.Vmlinux, art.Vmlinuz: k.Vmlinuz, art.Initrd: k.Initrd, art.Rootfs: im.Rootfs} {
		if err := publish(src, dst); err != nil {
			return store.ImageRecord{}, err
		}
	}
	if err := s.Store.PutKernel(ctx, k); err != nil {
		return store.ImageRecord{}, err
	}
	if err := s.Store.PutImage(ctx, im); err != nil {
		return store.ImageRecord{}, err
	}
	s.Log.Info("image registered", "image", name, "kernel", k.Name)
	return im, nil
}

// publish copies src to dst (hard-linking when possible) via a temp file
// and an atomic rename; the result is read-only.
func publish(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp := dst + ".tmp-" + newID()
	if err := os.Link(src, tmp); err != nil {
		if err := copyFile(src, tmp); err != nil {
			os.Remove(tmp)
			return err
		}
	}
	if err := os.Chmod(tmp, 0o444); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Show returns one registered image.
func (s *Service) Show(ctx context.Context, name string) (api.Image, error) {
	im, err := s.Store.GetImage(ctx, name)
	if err != nil {
		return api.Image{}, err
	}
	return s.toAPI(ctx, im), nil
}

// Delete removes a registered image and its root filesystem. It refuses
// while any VM uses the image. A built-in image is built again on next use.
func (s *Service) Delete(ctx context.Context, name string) error {
	l := s.lock(name)
	l.Lock()
	defer l.Unlock()
	im, err := s.Store.GetImage(ctx, name)
	if err != nil {
		return err
	}
	users, err := s.Store.VMsUsingImage(ctx, im.ID)
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return errdefs.BadRequestf("image %s is used by VM(s) %s; delete them first", im.Name, strings.Join(users, ", "))
	}
	if err := s.Store.DeleteImage(ctx, im.ID); err != nil {
		return err
	}
	if im.Managed {
		if err := os.RemoveAll(filepath.Dir(im.Rootfs)); err != nil {
			return fmt.Errorf("image %s: remove %s: %w", im.Name, filepath.Dir(im.Rootfs), err)
		}
	}
	s.Log.Info("image deleted", "image", im.Name)
	return nil
}

func (s *Service) toAPI(ctx context.Context, im store.ImageRecord) api.Image {
	kname := im.KernelID
	if k, err := s.Store.GetKernel(ctx, im.KernelID); err == nil {
		kname = k.Name
	}
	var size int64
	if fi, err := os.Stat(im.Rootfs); err == nil {
		size = fi.Size()
	}
	users, _ := s.Store.VMsUsingImage(ctx, im.ID)
	return api.Image{ID: im.ID, Name: im.Name, Rootfs: im.Rootfs, Kernel: kname, CreatedAt: im.CreatedAt, SizeBytes: size, Managed: im.Managed, UsedBy: users}
}

// List returns the registered images.
func (s *Service) List(ctx context.Context) ([]api.Image, error) {
	ims, err := s.Store.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.Image{}
	for _, im := range ims {
		out = append(out, s.toAPI(ctx, im))
	}
	return out, nil
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
