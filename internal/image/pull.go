package image

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/catalog"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/oci"
	"github.com/banger-dev/banger/internal/store"
)

// PullImage pulls an image by catalog name (when the image catalog has it)
// or from an OCI registry, and registers it. Pulls of one name are
// serialised; a later caller gets the published image unless Force.
func (s *Service) PullImage(ctx context.Context, p api.ImagePullParams, progress io.Writer) (api.Image, error) {
	if strings.TrimSpace(p.Ref) == "" {
		return api.Image{}, errdefs.BadRequestf("image pull needs a catalog name or an OCI reference (e.g. docker.io/library/debian:bookworm)")
	}
	if p.Name != "" && !catalog.SafeEntryName(p.Name) {
		return api.Image{}, errdefs.BadRequestf("invalid --name %q: use lower-case letters, digits, '.', '_' and '-'", p.Name)
	}
	if builtins[p.Ref] != nil {
		return api.Image{}, errdefs.BadRequestf("%s is built locally, not pulled: run 'banger image build %s'", p.Ref, p.Ref)
	}
	if s.Catalog.ImageURL != "" && catalog.SafeEntryName(p.Ref) {
		ix, _, err := s.catalogIndex(ctx, catalog.KindImage)
		if err != nil {
			return api.Image{}, err
		}
		if _, ok := ix.Find(p.Ref); ok {
			if p.Name != "" && p.Name != p.Ref {
				return api.Image{}, errdefs.BadRequestf("catalog image %s keeps its name; drop --name", p.Ref)
			}
			l := s.lock(p.Ref)
			l.Lock()
			defer l.Unlock()
			im, err := s.pullCatalogImage(ctx, p.Ref, p.Force, progress)
			if err != nil {
				return api.Image{}, err
			}
			return s.toAPI(ctx, im), nil
		}
	}
	im, err := s.pullOCI(ctx, p, progress)
	if err != nil {
		return api.Image{}, err
	}
	return s.toAPI(ctx, im), nil
}

// pullCatalogImage pulls a catalog image and the kernel it names. The caller
// holds the name's lock.
func (s *Service) pullCatalogImage(ctx context.Context, name string, force bool, progress io.Writer) (store.ImageRecord, error) {
	old, oldErr := s.Store.GetImage(ctx, name)
	if oldErr == nil && !force {
		return old, nil
	}
	ix, url, err := s.catalogIndex(ctx, catalog.KindImage)
	if err != nil {
		return store.ImageRecord{}, err
	}
	e, ok := ix.Find(name)
	if !ok {
		return store.ImageRecord{}, errdefs.NotFoundf("image %q is not in the image catalog %s", name, url)
	}
	var k store.KernelRecord
	if e.Kernel != "" {
		if k, err = s.pullKernel(ctx, e.Kernel, false, progress); err != nil {
			return store.ImageRecord{}, fmt.Errorf("image %s needs kernel %s: %w", name, e.Kernel, err)
		}
	} else if k, _, err = s.ensureBuiltinKernel(ctx, progress); err != nil {
		return store.ImageRecord{}, err
	}
	fmt.Fprintf(orDiscard(progress), "pulling image %s (%s)\n", name, config.FormatSize(e.Size))
	restore, err := setAside(filepath.Join(s.Layout.ImagesDir(), catalog.DirName(e)), force)
	if err != nil {
		return store.ImageRecord{}, err
	}
	dir, err := s.catalogClient().Pull(ctx, ix, e, s.Layout.ImagesDir(), pullProgress(progress, "image "+name))
	restore(err)
	if err != nil {
		return store.ImageRecord{}, fmt.Errorf("pull image %s: %w", name, err)
	}
	im := store.ImageRecord{ID: newID(), Name: name, Rootfs: filepath.Join(dir, "rootfs.ext4"), KernelID: k.ID, Managed: true,
		CreatedAt: time.Now().UTC().Format(time.RFC3339),
		Meta:      map[string]string{metaSource: "catalog " + url, metaSHA256: e.SHA256, metaKernelRef: e.Kernel}}
	if err := s.putOrReplace(ctx, im, old, oldErr == nil); err != nil {
		os.RemoveAll(dir)
		return store.ImageRecord{}, err
	}
	s.Log.Info("image pulled", "image", name, "sha256", e.SHA256, "kernel", k.Name)
	return s.Store.GetImage(ctx, name)
}

// putOrReplace registers im, or rewrites the old record of that name (same
// id, so VMs made from it keep their image) and removes the old files.
func (s *Service) putOrReplace(ctx context.Context, im, old store.ImageRecord, replace bool) error {
	if !replace {
		return s.Store.PutImage(ctx, im)
	}
	im.ID, im.CreatedAt = old.ID, old.CreatedAt
	if err := s.Store.UpdateImage(ctx, im); err != nil {
		return err
	}
	if old.Managed {
		if od, nd := filepath.Dir(old.Rootfs), filepath.Dir(im.Rootfs); od != nd && s.managedDir(s.Layout.ImagesDir(), old.Rootfs) == od {
			os.RemoveAll(od)
		}
	}
	return nil
}

// pullOCI imports an image from a registry: layers fetched (and cached),
// flattened, banger's guest kit added, an ext4 built without mounting, and
// published by an atomic rename.
func (s *Service) pullOCI(ctx context.Context, p api.ImagePullParams, progress io.Writer) (store.ImageRecord, error) {
	name := p.Name
	if name == "" {
		n, err := oci.DefaultName(p.Ref)
		if err != nil {
			return store.ImageRecord{}, errdefs.BadRequestf("%q is neither a catalog image nor an OCI reference: %v", p.Ref, err)
		}
		name = n
	}
	if builtins[name] != nil {
		return store.ImageRecord{}, errdefs.BadRequestf("%s is a built-in image name; choose another with --name", name)
	}
	l := s.lock(name)
	l.Lock()
	defer l.Unlock()
	old, oldErr := s.Store.GetImage(ctx, name)
	if oldErr == nil && !p.Force {
		return store.ImageRecord{}, errdefs.AlreadyExistsf("an image named %s already exists: pass --force to replace it, or --name", name)
	}
	// The built-in guest supplies the guest kit, and the kernel unless --kernel.
	k, art, err := s.ensureBuiltinKernel(ctx, progress)
	if err != nil {
		return store.ImageRecord{}, err
	}
	if p.Kernel != "" {
		if k, err = s.Store.GetKernel(ctx, p.Kernel); err != nil {
			return store.ImageRecord{}, err
		}
	}
	kit, err := newGuestKit(ctx, art)
	if err != nil {
		return store.ImageRecord{}, err
	}
	w := orDiscard(progress)
	lim := oci.Limits{MaxLayerBytes: s.OCI.MaxLayerBytes(), MaxImageBytes: s.OCI.MaxImageBytes()}
	puller := &oci.Puller{CacheDir: s.Layout.CacheDir, Limits: lim, Progress: func(msg string) { fmt.Fprintln(w, msg) }}
	f, err := puller.Fetch(ctx, p.Ref)
	if err != nil {
		return store.ImageRecord{}, fmt.Errorf("pull %s: %w", p.Ref, err)
	}
	staging, err := os.MkdirTemp(stagingRoot(s.Layout.ImagesDir()), name+"-")
	if err != nil {
		return store.ImageRecord{}, err
	}
	defer os.RemoveAll(staging)
	fmt.Fprintf(w, "flattening %d layer(s)\n", len(f.Layers))
	tree, err := oci.FlattenWithLimits(ctx, f.Layers, filepath.Join(staging, "tree"), lim)
	if err != nil {
		return store.ImageRecord{}, fmt.Errorf("pull %s: %w", p.Ref, err)
	}
	if err := kit.inject(tree); err != nil {
		return store.ImageRecord{}, fmt.Errorf("pull %s: add banger's guest kit: %w", p.Ref, err)
	}
	if env := envScript(f.Config.Env); env != nil {
		// Commands run through 'vm exec/run' source /.banger/env; login
		// shells read the profile.d copy.
		if err := tree.AddFile("/.banger/env", 0o644, env); err != nil {
			return store.ImageRecord{}, err
		}
		if err := tree.AddFile("/etc/profile.d/zz-banger-image-env.sh", 0o644, env); err != nil {
			return store.ImageRecord{}, err
		}
	}
	fmt.Fprintf(w, "building the root filesystem (%s of files)\n", config.FormatSize(tree.Bytes))
	if err := oci.BuildExt4(ctx, tree, filepath.Join(staging, "rootfs.ext4"), ociHeadroom); err != nil {
		return store.ImageRecord{}, fmt.Errorf("pull %s: %w", p.Ref, err)
	}
	if err := os.RemoveAll(tree.Dir); err != nil {
		return store.ImageRecord{}, err
	}
	if err := os.Chmod(filepath.Join(staging, "rootfs.ext4"), 0o444); err != nil {
		return store.ImageRecord{}, err
	}
	final := filepath.Join(s.Layout.ImagesDir(), name+"-"+shortDigest(f.Digest))
	if err := os.RemoveAll(final); err != nil {
		return store.ImageRecord{}, err
	}
	if err := os.Rename(staging, final); err != nil {
		return store.ImageRecord{}, err
	}
	im := store.ImageRecord{ID: newID(), Name: name, Rootfs: filepath.Join(final, "rootfs.ext4"), KernelID: k.ID, Managed: true,
		CreatedAt: time.Now().UTC().Format(time.RFC3339),
		Meta:      map[string]string{metaSource: "oci " + f.Ref + "@" + f.Digest, metaInit: kitInitPath}}
	if err := s.putOrReplace(ctx, im, old, oldErr == nil); err != nil {
		os.RemoveAll(final)
		return store.ImageRecord{}, err
	}
	s.Log.Info("image imported", "image", name, "ref", f.Ref, "digest", f.Digest, "layers", len(f.Layers))
	return s.Store.GetImage(ctx, name)
}

// ociHeadroom is free space added to an imported root filesystem.
const ociHeadroom = 512 << 20

func shortDigest(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	if len(d) > 12 {
		d = d[:12]
	}
	return d
}

// stagingRoot is root/.staging, created on demand; leftovers of a crash are
// removed by the next daemon start (CleanStaging).
func stagingRoot(root string) string {
	d := filepath.Join(root, ".staging")
	_ = os.MkdirAll(d, 0o755)
	return d
}

// CleanStaging removes what interrupted pulls left behind. Called at daemon
// start, before any pull can run.
func (s *Service) CleanStaging() {
	for _, root := range []string{s.Layout.ImagesDir(), s.Layout.KernelsDir()} {
		ents, err := os.ReadDir(filepath.Join(root, ".staging"))
		if err != nil {
			continue
		}
		for _, e := range ents {
			p := filepath.Join(root, ".staging", e.Name())
			if err := os.RemoveAll(p); err == nil {
				s.Log.Info("removed an interrupted pull", "path", p)
			}
		}
	}
}

// CachePrune empties the OCI layer cache and removes the derived images no
// VM uses but the newest of each repository (or, dry, says what that frees).
func (s *Service) CachePrune(ctx context.Context, dryRun bool) (api.CachePruneResult, error) {
	freed, blobs, err := oci.PruneCache(s.Layout.CacheDir, dryRun)
	if err != nil {
		return api.CachePruneResult{}, err
	}
	names, dfreed, err := s.pruneDerived(ctx, dryRun)
	if err != nil {
		return api.CachePruneResult{}, err
	}
	return api.CachePruneResult{Dir: filepath.Join(s.Layout.CacheDir, "oci"), FreedBytes: freed + dfreed, Blobs: blobs, Images: names, DryRun: dryRun}, nil
}

// ImageCatalog lists the image catalog with each entry's local state.
func (s *Service) ImageCatalog(ctx context.Context) (api.Catalog, error) {
	return s.catalogListing(ctx, catalog.KindImage, func(name string) bool {
		_, err := s.Store.GetImage(ctx, name)
		return err == nil
	})
}

// envScript turns an image's ENV (KEY=value lines) into sh exports, each
// value single-quoted; names that are not shell identifiers are skipped.
// nil when there is nothing to export.
func envScript(env []string) []byte {
	var b strings.Builder
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !envName.MatchString(k) {
			continue
		}
		fmt.Fprintf(&b, "export %s='%s'\n", k, strings.ReplaceAll(v, "'", `'\''`))
	}
	if b.Len() == 0 {
		return nil
	}
	return []byte("# The environment the image declares (ENV), written by banger at import.\n" + b.String())
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// setAside makes a forced pull download again: the published copy of the
// same bundle is renamed aside, then removed once the new one is in, or put
// back if the pull fails. Without force it does nothing.
func setAside(dir string, force bool) (restore func(pullErr error), err error) {
	noop := func(error) {}
	if !force {
		return noop, nil
	}
	if _, err := os.Lstat(dir); err != nil {
		return noop, nil
	}
	aside := dir + ".old-" + newID()
	if err := os.Rename(dir, aside); err != nil {
		return nil, err
	}
	return func(pullErr error) {
		if pullErr != nil {
			if _, err := os.Lstat(dir); err != nil {
				_ = os.Rename(aside, dir)
				return
			}
		}
		_ = os.RemoveAll(aside)
	}, nil
}
