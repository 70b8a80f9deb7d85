// Package image owns images and kernels: resolving an image name to a root
// filesystem and a kernel, and producing banger's built-in images
// (debian-bookworm, the dev box and default; debian-bookworm-minimal; tiny)
// on demand from Debian packages (internal/guestbuild).
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
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/catalog"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/guestbuild"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
)

// builtins can be produced locally when missing: name -> how.
var builtins = guestbuild.Builtins

// Service resolves and registers images and kernels.
type Service struct {
	Store   *store.Store
	Layout  paths.Layout
	Log     *slog.Logger
	Catalog config.Catalog // where `image pull NAME` / `kernel pull NAME` look
	OCI     config.OCI     // caps on what an OCI image unpacks to
	HTTP    *http.Client   // nil: the catalog client's default

	mu    sync.Mutex
	locks map[string]*sync.Mutex

	catOnce    sync.Once
	cat        *catalog.Client
	keyOnce    sync.Once
	catalogKey []byte
	keyErr     error
	toolsOnce  sync.Once
}

// Resolved is what a VM boots from.
type Resolved struct {
	Image  store.ImageRecord
	Kernel store.KernelRecord
	// WorkSeed is the image's /root as a tar ("" = none), copied into each
	// new VM's work disk.
	WorkSeed string
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

// Known reports whether name is registered, can be built, or is in the
// image catalog.
func (s *Service) Known(ctx context.Context, name string) error {
	if builtins[name] != nil {
		return nil
	}
	_, err := s.Store.GetImage(ctx, name)
	if err == nil || !errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	if s.Catalog.ImageURL != "" {
		ix, _, cerr := s.catalogIndex(ctx, catalog.KindImage)
		if cerr != nil {
			return fmt.Errorf("image %q is not registered, and the image catalog cannot be read: %w", name, cerr)
		}
		if _, ok := ix.Find(name); ok {
			return nil
		}
	}
	return errdefs.NotFoundf("unknown image %q (available: %s; or 'banger image pull REF')", name, s.available(ctx))
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
	return strings.Join(out, ", ")
}

// Resolve returns the image and its kernel: a registered image as is; a
// missing built-in is built, a missing catalog image pulled (with its
// kernel), showing progress.
func (s *Service) Resolve(ctx context.Context, name string, progress io.Writer) (Resolved, error) {
	l := s.lock(name)
	l.Lock()
	im, err := s.Store.GetImage(ctx, name)
	if err == nil && builtins[name] != nil && im.Managed && strings.HasPrefix(im.Meta[metaSource], "guestbuild ") &&
		!guestbuild.IsKeyOf(name, strings.TrimPrefix(im.Meta[metaSource], "guestbuild ")) {
		// Registered by an older banger under a name whose recipe has
		// changed (debian-bookworm was the minimal image before it became
		// the dev box): build what the name means now.
		im, err = s.buildBuiltin(ctx, name, progress)
	} else if errors.Is(err, errdefs.ErrNotFound) {
		switch {
		case builtins[name] != nil:
			im, err = s.buildBuiltin(ctx, name, progress)
		default:
			// Only an unregistered name needs the catalog (and Known's
			// error, naming what is available, when it is not there).
			if err = s.Known(ctx, name); err == nil {
				im, err = s.pullCatalogImage(ctx, name, false, progress)
			}
		}
	}
	l.Unlock()
	if err != nil {
		return Resolved{}, err
	}
	if _, err := os.Stat(im.Rootfs); err != nil {
		return Resolved{}, fmt.Errorf("image %s: root filesystem %s is missing (delete the image and pull or build it again)", name, im.Rootfs)
	}
	k, err := s.Store.GetKernel(ctx, im.KernelID)
	if errors.Is(err, errdefs.ErrNotFound) && im.Meta[metaKernelRef] != "" {
		// The catalog kernel was removed: pull it again.
		k, err = s.pullKernel(ctx, im.Meta[metaKernelRef], false, progress)
	}
	if err != nil {
		return Resolved{}, fmt.Errorf("image %s: %w", name, err)
	}
	// The root helper only reads files under banger's own directories.
	for _, f := range []string{im.Rootfs, k.Vmlinux, k.Initrd} {
		if f != "" && !s.underRoots(f) {
			return Resolved{}, errdefs.BadRequestf("image %s uses %s, outside banger's state dir: run 'banger image promote %s' to copy it in", name, f, name)
		}
	}
	return Resolved{Image: im, Kernel: k, WorkSeed: s.workSeed(ctx, im.Rootfs)}, nil
}

func (s *Service) underRoots(f string) bool {
	for _, root := range []string{s.Layout.StateDir, s.Layout.CacheDir} {
		if rel, err := filepath.Rel(root, f); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			return true
		}
	}
	return false
}

// Image meta keys.
const (
	metaKernelRef = "kernel_ref" // catalog kernel name, pulled again when missing
	metaInit      = "init"       // init= on the kernel command line
)

// Init is the init= the image boots with ("" = the initramfs default).
func (r Resolved) Init() string { return r.Image.Meta[metaInit] }

// BuildImage builds a built-in image from Debian packages and registers it,
// replacing the registered root filesystem when the recipe changed.
func (s *Service) BuildImage(ctx context.Context, name string, progress io.Writer) (api.Image, error) {
	if builtins[name] == nil {
		return api.Image{}, errdefs.BadRequestf("cannot build %q: banger builds %s; import other images with 'banger image pull REF'", name, strings.Join(builtinNames(), " and "))
	}
	l := s.lock(name)
	l.Lock()
	defer l.Unlock()
	im, err := s.buildBuiltin(ctx, name, progress)
	if err != nil {
		return api.Image{}, err
	}
	return s.toAPI(ctx, im), nil
}

func builtinNames() []string { return guestbuild.BuiltinNames() }

// buildBuiltin builds (or reuses the cached) guest artifacts of a built-in
// image and publishes them into the state dir: kernels/<version>/ and
// images/<name>/. All built-ins share the kernel record. The caller holds
// the name's lock.
func (s *Service) buildBuiltin(ctx context.Context, name string, progress io.Writer) (store.ImageRecord, error) {
	s.Log.Info("building image", "image", name)
	k, _, err := s.ensureBuiltinKernel(ctx, progress)
	if err != nil {
		return store.ImageRecord{}, err
	}
	art, err := builtins[name](ctx, guestbuild.Options{CacheDir: s.Layout.CacheDir, Progress: progress})
	if err != nil {
		if strings.Contains(err.Error(), "needs root") && os.Geteuid() != 0 {
			return store.ImageRecord{}, errdefs.BadRequestf("build image %s: the daemon does not run as root, and mmdebstrap needs it: run 'sudo banger internal build-guest --image %s' once (or use --image tiny, or pull %s from a catalog)", name, name, name)
		}
		return store.ImageRecord{}, fmt.Errorf("build image %s: %w", name, err)
	}
	source := "guestbuild " + art.Key
	old, oldErr := s.Store.GetImage(ctx, name)
	if oldErr == nil && old.Meta[metaSource] == source && old.KernelID == k.ID {
		if _, err := os.Stat(old.Rootfs); err == nil {
			fmt.Fprintf(orDiscard(progress), "image %s is up to date (%s)\n", name, art.Key)
			return old, nil
		}
	}
	now := time.Now().UTC().Format(time.RFC3339)
	idir := filepath.Join(s.Layout.ImagesDir(), name)
	im := store.ImageRecord{ID: newID(), Name: name, Rootfs: filepath.Join(idir, "rootfs.ext4"), KernelID: k.ID, Managed: true, CreatedAt: now,
		Meta: map[string]string{metaSource: source}}
	if err := publish(art.Rootfs, im.Rootfs); err != nil {
		return store.ImageRecord{}, err
	}
	if oldErr == nil {
		im.ID, im.CreatedAt = old.ID, old.CreatedAt
		err = s.Store.UpdateImage(ctx, im)
	} else {
		err = s.Store.PutImage(ctx, im)
	}
	if err != nil {
		return store.ImageRecord{}, err
	}
	s.Log.Info("image registered", "image", name, "kernel", k.Name, "source", source)
	return im, nil
}

// publish copies src to dst (hard-linking when possible) via a temp file
// and an atomic rename; the result is read-only.
func publish(src, dst string) error { return publishFile(src, dst, true) }

// publishFile is publish; link=false always copies (reflinked where the
// filesystem can, else sparse), for a source that may still be written.
func publishFile(src, dst string, link bool) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp := dst + ".tmp-" + newID()
	if !link || os.Link(src, tmp) != nil {
		if err := cloneInto(src, tmp); err != nil {
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
	return api.Image{ID: im.ID, Name: im.Name, Rootfs: im.Rootfs, Kernel: kname, CreatedAt: im.CreatedAt, SizeBytes: size, Managed: im.Managed, Source: im.Meta[metaSource], UsedBy: users}
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
