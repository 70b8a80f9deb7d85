package image

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/catalog"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/ext4"
	"github.com/banger-dev/banger/internal/guestbuild"
	"github.com/banger-dev/banger/internal/store"
)

// Kernels: the built-in one (Debian's cloud kernel, made by guestbuild and
// shared by the built-in images), kernels imported from a Debian kernel
// package (`kernel import`), pulled from the kernel catalog (`kernel pull`)
// or registered with an image (`image register --vmlinux`). Managed kernels
// live in KernelsDir/<dir>/ and are removed with their record.

// Kernel meta keys.
const (
	metaSource  = "source"
	metaSHA256  = "sha256"
	metaModules = "modules"
	metaManaged = "managed"
)

// ensureBuiltinKernel builds (or reuses) the guest artifacts and registers
// their kernel. Built-in images and OCI imports boot it.
func (s *Service) ensureBuiltinKernel(ctx context.Context, progress io.Writer) (store.KernelRecord, guestbuild.Artifacts, error) {
	art, err := guestbuild.Ensure(ctx, guestbuild.Options{CacheDir: s.Layout.CacheDir, Progress: progress})
	if err != nil {
		return store.KernelRecord{}, art, fmt.Errorf("build the kernel: %w", err)
	}
	k, err := s.registerGuestKernel(ctx, art, art.KernelVersion, "debian linux-image-cloud-amd64 (guestbuild "+art.Key+")")
	return k, art, err
}

// registerGuestKernel publishes a guestbuild kernel (vmlinux, vmlinuz,
// initrd and the modules tree) as kernel name.
func (s *Service) registerGuestKernel(ctx context.Context, art guestbuild.Artifacts, name, source string) (store.KernelRecord, error) {
	l := s.lock("kernel/" + name)
	l.Lock()
	defer l.Unlock()
	if k, err := s.Store.GetKernel(ctx, name); err == nil && k.Meta[metaSource] == source {
		if _, err := os.Stat(k.Vmlinux); err == nil {
			return k, nil
		}
	}
	kdir := filepath.Join(s.Layout.KernelsDir(), name)
	k := store.KernelRecord{
		ID: "k-" + name, Name: name, Version: art.KernelVersion,
		Vmlinux: filepath.Join(kdir, "vmlinux"), Vmlinuz: filepath.Join(kdir, "vmlinuz"), Initrd: filepath.Join(kdir, "initrd.img"),
		CreatedAt: time.Now().UTC().Format(time.RFC3339),
		Meta:      map[string]string{metaSource: source, metaManaged: "1", metaModules: filepath.Join(kdir, "modules")},
	}
	for src, dst := range map[string]string{art.Vmlinux: k.Vmlinux, art.Vmlinuz: k.Vmlinuz, art.Initrd: k.Initrd} {
		if err := publish(src, dst); err != nil {
			return k, err
		}
	}
	if err := extractModules(ctx, art.Rootfs, art.KernelVersion, k.Meta[metaModules]); err != nil {
		return k, err
	}
	if err := s.Store.PutKernel(ctx, k); err != nil {
		return k, err
	}
	s.Log.Info("kernel registered", "kernel", name, "version", art.KernelVersion)
	return s.Store.GetKernel(ctx, name)
}

// extractModules copies /lib/modules/<kver> out of a guest rootfs with
// debugfs (no mount) into dst/<kver>.
func extractModules(ctx context.Context, rootfs, kver, dst string) error {
	if _, err := os.Stat(filepath.Join(dst, kver, "modules.dep")); err == nil {
		return nil
	}
	tmp := dst + ".tmp-" + newID()
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := ext4.Rdump(ctx, rootfs, "/lib/modules/"+kver, tmp); err != nil {
		return fmt.Errorf("modules of %s from %s: %w", kver, rootfs, err)
	}
	if _, err := os.Stat(filepath.Join(tmp, kver, "modules.dep")); err != nil {
		return fmt.Errorf("modules of %s: no modules.dep in %s", kver, rootfs)
	}
	os.RemoveAll(dst)
	return os.Rename(tmp, dst)
}

// ImportKernel imports Debian's cloud kernel package (from the archive, or a
// local .deb) as a managed kernel: vmlinux for Firecracker, vmlinuz plus an
// initramfs that loads the virtio modules for other VMMs, and the modules.
func (s *Service) ImportKernel(ctx context.Context, p api.KernelImportParams, progress io.Writer) (api.Kernel, error) {
	if p.Deb != "" {
		if !filepath.IsAbs(p.Deb) {
			return api.Kernel{}, errdefs.BadRequestf("--deb %q must be an absolute path", p.Deb)
		}
		if fi, err := os.Stat(p.Deb); err != nil || !fi.Mode().IsRegular() || !strings.HasSuffix(p.Deb, ".deb") {
			return api.Kernel{}, errdefs.BadRequestf("--deb %q is not a readable .deb file (want a linux-image-*-cloud-amd64 package)", p.Deb)
		}
	}
	if p.Name != "" && !catalog.SafeEntryName(p.Name) {
		return api.Kernel{}, errdefs.BadRequestf("invalid kernel name %q: use lower-case letters, digits, '.', '_' and '-'", p.Name)
	}
	art, err := guestbuild.Ensure(ctx, guestbuild.Options{CacheDir: s.Layout.CacheDir, Progress: progress, KernelDeb: p.Deb})
	if err != nil {
		return api.Kernel{}, fmt.Errorf("import kernel: %w", err)
	}
	name := p.Name
	if name == "" {
		name = art.KernelVersion
	}
	src := "debian package linux-image-" + art.KernelVersion + " (guestbuild " + art.Key + ")"
	if p.Deb != "" {
		src = "debian package " + p.Deb + " (guestbuild " + art.Key + ")"
	}
	k, err := s.registerGuestKernel(ctx, art, name, src)
	if err != nil {
		return api.Kernel{}, err
	}
	return s.kernelAPI(ctx, k), nil
}

// ShowKernel returns one registered kernel.
func (s *Service) ShowKernel(ctx context.Context, name string) (api.Kernel, error) {
	k, err := s.Store.GetKernel(ctx, name)
	if err != nil {
		return api.Kernel{}, err
	}
	return s.kernelAPI(ctx, k), nil
}

// ListKernels returns the registered kernels.
func (s *Service) ListKernels(ctx context.Context) ([]api.Kernel, error) {
	ks, err := s.Store.ListKernels(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.Kernel{}
	for _, k := range ks {
		out = append(out, s.kernelAPI(ctx, k))
	}
	return out, nil
}

// DeleteKernel removes a kernel no image boots, and its files when managed.
func (s *Service) DeleteKernel(ctx context.Context, name string) error {
	k, err := s.Store.GetKernel(ctx, name)
	if err != nil {
		return err
	}
	l := s.lock("kernel/" + k.Name)
	l.Lock()
	defer l.Unlock()
	users, err := s.Store.ImagesUsingKernel(ctx, k.ID)
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return errdefs.BadRequestf("kernel %s is used by image(s) %s; delete them first", k.Name, strings.Join(users, ", "))
	}
	if err := s.Store.DeleteKernel(ctx, k.ID); err != nil {
		return err
	}
	if dir := s.managedDir(s.Layout.KernelsDir(), k.Vmlinux); dir != "" {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("kernel %s: remove %s: %w", k.Name, dir, err)
		}
	}
	s.Log.Info("kernel deleted", "kernel", k.Name)
	return nil
}

// managedDir is the directory directly under root that holds file, or ""
// when file is not under root (an unmanaged, user-owned file).
func (s *Service) managedDir(root, file string) string {
	rel, err := filepath.Rel(root, file)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") || filepath.IsAbs(rel) {
		return ""
	}
	first := strings.SplitN(rel, string(filepath.Separator), 2)[0]
	if first == "" || first == "." || first == ".." {
		return ""
	}
	return filepath.Join(root, first)
}

func (s *Service) kernelAPI(ctx context.Context, k store.KernelRecord) api.Kernel {
	var size int64
	for _, f := range []string{k.Vmlinux, k.Vmlinuz, k.Initrd} {
		if fi, err := os.Stat(f); err == nil && f != "" {
			size += fi.Size()
		}
	}
	users, _ := s.Store.ImagesUsingKernel(ctx, k.ID)
	mods := k.Meta[metaModules]
	if _, err := os.Stat(mods); err != nil {
		mods = ""
	}
	return api.Kernel{ID: k.ID, Name: k.Name, Version: k.Version, Vmlinux: k.Vmlinux, Vmlinuz: existing(k.Vmlinuz), Initrd: existing(k.Initrd),
		Modules: mods, Source: k.Meta[metaSource], Managed: s.managedDir(s.Layout.KernelsDir(), k.Vmlinux) != "",
		SizeBytes: size, CreatedAt: k.CreatedAt, UsedBy: users}
}

func existing(p string) string {
	if p == "" {
		return ""
	}
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// PullKernel fetches a kernel from the kernel catalog and registers it. A
// kernel already registered under that name is kept unless force.
func (s *Service) PullKernel(ctx context.Context, name string, force bool, progress io.Writer) (api.Kernel, error) {
	k, err := s.pullKernel(ctx, name, force, progress)
	if err != nil {
		return api.Kernel{}, err
	}
	return s.kernelAPI(ctx, k), nil
}

func (s *Service) pullKernel(ctx context.Context, name string, force bool, progress io.Writer) (store.KernelRecord, error) {
	ix, url, err := s.catalogIndex(ctx, catalog.KindKernel)
	if err != nil {
		return store.KernelRecord{}, err
	}
	e, ok := ix.Find(name)
	if !ok {
		return store.KernelRecord{}, errdefs.NotFoundf("kernel %q is not in the kernel catalog %s (see 'banger kernel list --available')", name, url)
	}
	l := s.lock("kernel/" + name)
	l.Lock()
	defer l.Unlock()
	old, oldErr := s.Store.GetKernel(ctx, name)
	if oldErr == nil && !force {
		return old, nil
	}
	fmt.Fprintf(orDiscard(progress), "pulling kernel %s (%s)\n", name, config.FormatSize(e.Size))
	restore, err := setAside(filepath.Join(s.Layout.KernelsDir(), catalog.DirName(e)), force)
	if err != nil {
		return store.KernelRecord{}, err
	}
	dir, err := s.catalogClient().Pull(ctx, ix, e, s.Layout.KernelsDir(), pullProgress(progress, "kernel "+name))
	restore(err)
	if err != nil {
		return store.KernelRecord{}, fmt.Errorf("pull kernel %s: %w", name, err)
	}
	k := store.KernelRecord{
		ID: "k-" + name, Name: name, Version: e.KernelVersion, Vmlinux: filepath.Join(dir, "vmlinux"),
		CreatedAt: time.Now().UTC().Format(time.RFC3339),
		Meta:      map[string]string{metaSource: "catalog " + url, metaSHA256: e.SHA256, metaManaged: "1"},
	}
	if p := filepath.Join(dir, "initrd.img"); existing(p) != "" {
		k.Initrd = p
	}
	if p := filepath.Join(dir, "vmlinuz"); existing(p) != "" {
		k.Vmlinuz = p
	}
	if p := filepath.Join(dir, "modules"); existing(p) != "" {
		k.Meta[metaModules] = p
	}
	if err := s.Store.PutKernel(ctx, k); err != nil {
		os.RemoveAll(dir)
		return store.KernelRecord{}, err
	}
	if oldErr == nil {
		if od := s.managedDir(s.Layout.KernelsDir(), old.Vmlinux); od != "" && od != dir {
			os.RemoveAll(od)
		}
	}
	s.Log.Info("kernel pulled", "kernel", name, "sha256", e.SHA256)
	return s.Store.GetKernel(ctx, name)
}

// KernelCatalog lists the kernel catalog with each entry's local state.
func (s *Service) KernelCatalog(ctx context.Context) (api.Catalog, error) {
	return s.catalogListing(ctx, catalog.KindKernel, func(name string) bool {
		_, err := s.Store.GetKernel(ctx, name)
		return err == nil
	})
}
