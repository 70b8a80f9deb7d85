// Package guestbuild builds the guest that every banger sandbox boots: Debian
// bookworm's cloud kernel (as an uncompressed ELF vmlinux with a PVH entry
// note, plus the original bzImage), a busybox initramfs that loads the virtio
// modules and mounts the root disk, and a small ext4 root filesystem with
// busybox and dropbear.
//
// Everything comes from Debian packages fetched with `apt-get download` and
// unpacked with `dpkg-deb -x` (nothing is installed on the host); the only
// network access is the Debian archive. The results are cached under
// CacheDir/guest/<key>/, where the key changes with the recipe (this package's
// code and guest scripts) and with the pinned package versions. Builds run in
// a staging directory and are published with an atomic rename while an flock
// on CacheDir/guest/.lock is held, so concurrent callers, in one process or
// many, build once. See docs/guest.md for the guest's behaviour contract.
package guestbuild

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options configures Ensure.
type Options struct {
	CacheDir string    // artifacts under CacheDir/guest/<key>/ ; key changes when the recipe or kernel version changes
	Progress io.Writer // optional: one line per step ("guest: fetching kernel 6.1.0-xx-cloud-amd64 ...")
	// KernelDeb, if set, is a local linux-image-*.deb used instead of the
	// archive's linux-image-cloud-amd64 (like BANGER_KERNEL_DEB, which it overrides).
	KernelDeb string
}

// Artifacts are the absolute paths of a published guest build.
type Artifacts struct {
	KernelVersion string
	Vmlinux       string // uncompressed ELF (with the PVH note) extracted from the Debian cloud kernel's vmlinuz
	Vmlinuz       string // the original bzImage
	Initrd        string // busybox initramfs loading the virtio modules (gzip'd newc cpio)
	Rootfs        string // ext4 image: busybox + dropbear, the read-only base

	Dir      string // the published directory CacheDir/guest/<key>
	Key      string // its name
	Manifest string // manifest.json: packages, modules, compression, PVH entry
}

// File names inside a published directory.
const (
	fileVmlinux  = "vmlinux"
	fileVmlinuz  = "vmlinuz"
	fileInitrd   = "initrd.cpio.gz"
	fileRootfs   = "rootfs.ext4"
	fileConfig   = "config"
	fileManifest = "manifest.json"
)

// recipeVersion is bumped by hand when the build changes in a way the
// embedded scripts do not show.
const recipeVersion = "guestbuild-1"

//go:embed guest
var guestFiles embed.FS

// recipeSources are this package's build code: any change to it changes the
// cache key (a comment edit costs one ~5 s rebuild; stale guests cost more).
//
//go:embed apt.go cpio.go guestbuild.go image.go kernel.go lz4.go modules.go
var recipeSources embed.FS

func mustScript(name string) []byte {
	b, err := guestFiles.ReadFile("guest/" + name)
	if err != nil {
		panic(err)
	}
	return b
}

var recipeOnce = sync.OnceValue(func() string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\nrootfs %s\nmodules %v %v\nuserland %v\n", recipeVersion, RootfsSize, guestModules, optionalModules, userlandPackages)
	hashFiles(h, guestFiles, recipeSources)
	return hex.EncodeToString(h.Sum(nil))
})

// hashFiles feeds every file of the embedded trees, in a stable order and
// with its name and length, into h.
func hashFiles(h io.Writer, trees ...embed.FS) {
	for _, fsys := range trees {
		var names []string
		fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				names = append(names, p)
			}
			return nil
		})
		sort.Strings(names)
		for _, n := range names {
			b, _ := fsys.ReadFile(n)
			fmt.Fprintf(h, "%s %d\n", n, len(b))
			h.Write(b)
		}
	}
}

// recipeHash identifies this package's recipe (code version, scripts, lists).
func recipeHash() string { return recipeOnce() }

// manifest is written last into a build and describes it.
type manifest struct {
	Key             string    `json:"key"`
	Recipe          string    `json:"recipe"`
	KernelVersion   string    `json:"kernel_version"`
	Compression     string    `json:"kernel_compression"`
	PVHEntry        string    `json:"pvh_entry"`
	Kernel          debPkg    `json:"kernel_package"`
	Packages        []debPkg  `json:"packages"`
	AgentSHA256     string    `json:"agent_sha256,omitempty"`
	Modules         []string  `json:"modules"`
	BuiltAt         time.Time `json:"built_at"`
	BuildSeconds    float64   `json:"build_seconds"`
	RootfsSize      string    `json:"rootfs_size"`
	InitrdBytes     int64     `json:"initrd_bytes"`
	VmlinuxBytes    int64     `json:"vmlinux_bytes"`
	RootfsAllocated int64     `json:"rootfs_allocated_bytes"`
}

type progress struct{ w io.Writer }

func (p progress) f(format string, a ...any) {
	if p.w != nil {
		fmt.Fprintf(p.w, "guest: "+format+"\n", a...)
	}
}

// Ensure returns the guest artifacts for the current recipe and the kernel
// that linux-image-cloud-amd64 names today, building and caching them first
// when needed. A published build is returned at once; the apt query behind
// the key is memoised until apt's package lists change. If apt cannot answer
// (no lists, no apt-cache), the newest build of this recipe is used.
func Ensure(ctx context.Context, opts Options) (Artifacts, error) {
	if opts.CacheDir == "" {
		return Artifacts{}, errors.New("guestbuild: Options.CacheDir is empty")
	}
	cache, err := filepath.Abs(opts.CacheDir)
	if err != nil {
		return Artifacts{}, err
	}
	root := filepath.Join(cache, "guest")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return Artifacts{}, fmt.Errorf("guestbuild: %w", err)
	}
	p := progress{opts.Progress}
	pl, err := makePlan(ctx, root, opts.KernelDeb)
	if err != nil {
		if ctx.Err() != nil {
			return Artifacts{}, ctx.Err()
		}
		if a, lerr := newestPublished(root); lerr == nil {
			p.f("cannot resolve packages (%v); using cached %s", err, a.Key)
			return a, nil
		}
		return Artifacts{}, fmt.Errorf("guestbuild: %w", err)
	}
	dir, err := ensurePublished(ctx, root, pl.Key, p, func(ctx context.Context, staging string) error {
		return build(ctx, root, staging, pl, p)
	})
	if err != nil {
		return Artifacts{}, fmt.Errorf("guestbuild: %w", err)
	}
	return loadArtifacts(dir)
}

// loadArtifacts reads a published directory.
func loadArtifacts(dir string) (Artifacts, error) {
	b, err := os.ReadFile(filepath.Join(dir, fileManifest))
	if err != nil {
		return Artifacts{}, fmt.Errorf("guestbuild: %w", err)
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Artifacts{}, fmt.Errorf("guestbuild: %s: %w", filepath.Join(dir, fileManifest), err)
	}
	return Artifacts{
		KernelVersion: m.KernelVersion,
		Vmlinux:       filepath.Join(dir, fileVmlinux),
		Vmlinuz:       filepath.Join(dir, fileVmlinuz),
		Initrd:        filepath.Join(dir, fileInitrd),
		Rootfs:        filepath.Join(dir, fileRootfs),
		Dir:           dir,
		Key:           filepath.Base(dir),
		Manifest:      filepath.Join(dir, fileManifest),
	}, nil
}

// published reports whether dir is a complete build.
func published(dir string) bool {
	for _, f := range []string{fileManifest, fileVmlinux, fileVmlinuz, fileInitrd, fileRootfs} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || !st.Mode().IsRegular() {
			return false
		}
	}
	return true
}

// newestPublished finds the most recent build of the current recipe.
func newestPublished(root string) (Artifacts, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return Artifacts{}, err
	}
	var best string
	var bestT time.Time
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		dir := filepath.Join(root, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, fileManifest))
		var m manifest
		if err != nil || json.Unmarshal(b, &m) != nil || m.Recipe != recipeHash() || !published(dir) {
			continue
		}
		if best == "" || m.BuiltAt.After(bestT) {
			best, bestT = dir, m.BuiltAt
		}
	}
	if best == "" {
		return Artifacts{}, errNoPublished
	}
	return loadArtifacts(best)
}

// buildFunc fills a staging directory; it must leave the artifact files and
// the manifest in it.
type buildFunc func(ctx context.Context, staging string) error

// ensurePublished returns root/key, running build under the lock and
// publishing its staging directory by rename when it does not exist yet.
func ensurePublished(ctx context.Context, root, key string, p progress, build buildFunc) (string, error) {
	final := filepath.Join(root, key)
	if published(final) {
		return final, nil
	}
	unlock, err := lockFile(ctx, filepath.Join(root, ".lock"), p)
	if err != nil {
		return "", err
	}
	defer unlock()
	if published(final) { // another process built it while we waited
		return final, nil
	}
	// We hold the lock: any staging directory left is from a build that died.
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".staging-") {
			os.RemoveAll(filepath.Join(root, e.Name()))
		}
	}
	if _, err := os.Lstat(final); err == nil { // incomplete: not ours to trust
		if err := os.RemoveAll(final); err != nil {
			return "", err
		}
	}
	staging, err := os.MkdirTemp(root, ".staging-"+key+"-")
	if err != nil {
		return "", err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(staging)
		}
	}()
	if err := build(ctx, staging); err != nil {
		return "", err
	}
	if !published(staging) {
		return "", errors.New("build left an incomplete directory")
	}
	if err := os.Chmod(staging, 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(staging, final); err != nil {
		return "", err
	}
	ok = true
	if d, err := os.Open(root); err == nil {
		d.Sync()
		d.Close()
	}
	return final, nil
}

// lockFile takes an exclusive flock on path, polling so ctx can cancel the
// wait. flock locks belong to the open file, so two callers in one process
// exclude each other just like two processes do.
func lockFile(ctx context.Context, path string, p progress) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	said := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("flock %s: %w", path, err)
		}
		if !said {
			p.f("waiting for another build (lock %s) ...", path)
			said = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// build makes all artifacts of pl in staging, stage by stage: packages,
// kernel, userland, initramfs, root filesystem, and the manifest last.
func build(ctx context.Context, root, staging string, pl plan, p progress) error {
	start := time.Now()
	t, err := checkTools()
	if err != nil {
		return err
	}
	work := filepath.Join(staging, "work")
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(work)

	debDir := filepath.Join(root, "debs")
	debs, err := fetchPackages(ctx, t, debDir, work, pl, p)
	if err != nil {
		return err
	}
	k, err := buildKernel(ctx, t, work, staging, pl, debs[pl.Kernel.Name], p)
	if err != nil {
		return err
	}
	u, err := unpackUserland(ctx, t, work, pl, debs)
	if err != nil {
		return err
	}
	if err := writeInitramfs(staging, u, k, p); err != nil {
		return err
	}
	if err := buildRootfs(ctx, work, staging, pl, k, u, p); err != nil {
		return err
	}
	m, err := writeManifest(work, staging, pl, k, start)
	if err != nil {
		return err
	}
	pruneDebs(debDir, debs)
	p.f("built %s in %.1fs", pl.Key, m.BuildSeconds)
	return nil
}

// fetchPackages is stage 1: it fetches (or finds cached in debDir) the
// kernel package and the userland packages, returning each package's file
// by name.
func fetchPackages(ctx context.Context, t hostTools, debDir, work string, pl plan, p progress) (map[string]string, error) {
	switch {
	case pl.Kernel.File != "":
		p.f("using kernel %s from %s=%s", pl.KernelVersion, KernelDebEnv, pl.Kernel.File)
	case debCached(debDir, pl.Kernel):
		p.f("using cached kernel %s (%s %s)", pl.KernelVersion, pl.Kernel.Name, pl.Kernel.Version)
	default:
		p.f("fetching kernel %s (%s %s) ...", pl.KernelVersion, pl.Kernel.Name, pl.Kernel.Version)
	}
	debs, err := fetchDebs(ctx, t, debDir, work, []debPkg{pl.Kernel})
	if err != nil {
		return nil, fmt.Errorf("fetching the kernel: %w", err)
	}
	names := make([]string, len(pl.Userland))
	for i, u := range pl.Userland {
		names[i] = u.Name
	}
	cached := 0
	for _, u := range pl.Userland {
		if debCached(debDir, u) {
			cached++
		}
	}
	if cached == len(pl.Userland) {
		p.f("using cached %s", strings.Join(names, ", "))
	} else {
		p.f("fetching %s ...", strings.Join(names, ", "))
	}
	ud, err := fetchDebs(ctx, t, debDir, work, pl.Userland)
	if err != nil {
		return nil, fmt.Errorf("fetching packages: %w", err)
	}
	for k, v := range ud {
		debs[k] = v
	}
	return debs, nil
}

// builtKernel is what stage 2 leaves for the later stages.
type builtKernel struct {
	kver, comp   string
	entry        uint64
	vmlinuxBytes int64
	mods         []kmodule
}

// buildKernel is stage 2: it unpacks the kernel package kernelDeb, writes
// vmlinuz, its config and the extracted vmlinux to staging, and resolves
// the guest's modules.
func buildKernel(ctx context.Context, t hostTools, work, staging string, pl plan, kernelDeb string, p progress) (builtKernel, error) {
	p.f("unpacking %s ...", filepath.Base(kernelDeb))
	kroot := filepath.Join(work, "kernel")
	if err := unpackDeb(ctx, t, kernelDeb, kroot); err != nil {
		return builtKernel{}, err
	}
	kver, vmlinuzPath, err := findVmlinuz(kroot, pl.KernelVersion)
	if err != nil {
		return builtKernel{}, err
	}
	bz, err := os.ReadFile(vmlinuzPath)
	if err != nil {
		return builtKernel{}, err
	}
	if err := writeFileSync(filepath.Join(staging, fileVmlinuz), bz, 0o644); err != nil {
		return builtKernel{}, err
	}
	if cfg, err := os.ReadFile(filepath.Join(kroot, "boot", "config-"+kver)); err == nil {
		if err := writeFileSync(filepath.Join(staging, fileConfig), cfg, 0o644); err != nil {
			return builtKernel{}, err
		}
	}
	_, comp, _ := BzPayload(bz)
	p.f("extracting vmlinux from vmlinuz-%s (%s payload) ...", kver, comp)
	vmlinux, comp, err := ExtractVmlinux(ctx, bz)
	if err != nil {
		return builtKernel{}, fmt.Errorf("vmlinuz-%s: %w", kver, err)
	}
	entry, err := PVHEntry(vmlinux)
	if err != nil {
		return builtKernel{}, fmt.Errorf("vmlinux-%s: %w", kver, err)
	}
	if err := writeFileSync(filepath.Join(staging, fileVmlinux), vmlinux, 0o644); err != nil {
		return builtKernel{}, err
	}
	k := builtKernel{kver: kver, comp: comp, entry: entry, vmlinuxBytes: int64(len(vmlinux))}
	bz, vmlinux = nil, nil
	p.f("resolving modules %s ...", strings.Join(guestModules, " "))
	if k.mods, err = moduleClosure(ctx, t, kroot, kver); err != nil {
		return builtKernel{}, err
	}
	if err := os.RemoveAll(kroot); err != nil {
		return builtKernel{}, err
	}
	return k, nil
}

// unpackedUserland is what stage 3 leaves for the later stages.
type unpackedUserland struct {
	debRoots map[string]string // package name → unpacked tree
	bbPath   string
	busybox  []byte
}

// unpackUserland is stage 3: it unpacks the userland packages and reads
// busybox-static's /bin/busybox, which must be a static ELF.
func unpackUserland(ctx context.Context, t hostTools, work string, pl plan, debs map[string]string) (unpackedUserland, error) {
	u := unpackedUserland{debRoots: map[string]string{}}
	for _, pkg := range pl.Userland {
		d := filepath.Join(work, "debs", pkg.Name)
		if err := unpackDeb(ctx, t, debs[pkg.Name], d); err != nil {
			return unpackedUserland{}, err
		}
		u.debRoots[pkg.Name] = d
	}
	u.bbPath = filepath.Join(u.debRoots["busybox-static"], "bin", "busybox")
	busybox, err := os.ReadFile(u.bbPath)
	if err != nil {
		return unpackedUserland{}, fmt.Errorf("busybox-static: %w", err)
	}
	if !isStaticELF(busybox) {
		return unpackedUserland{}, errors.New("busybox-static's /bin/busybox is not a static ELF")
	}
	u.busybox = busybox
	return u, nil
}

// writeInitramfs is stage 4: busybox and the kernel's modules.
func writeInitramfs(staging string, u unpackedUserland, k builtKernel, p progress) error {
	p.f("writing initramfs (busybox + %d modules) ...", len(k.mods))
	if err := buildInitramfs(filepath.Join(staging, fileInitrd), u.busybox, k.mods); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return nil
}

// buildRootfs is stage 5: the root filesystem tree, made into an ext4
// image of RootfsSize.
func buildRootfs(ctx context.Context, work, staging string, pl plan, k builtKernel, u unpackedUserland, p progress) error {
	p.f("building rootfs (busybox, dropbear; mkfs.ext4 -d, %s) ...", RootfsSize)
	applets, err := busyboxApplets(ctx, u.bbPath)
	if err != nil {
		return err
	}
	tree := filepath.Join(work, "rootfs")
	if err := buildRootfsTree(tree, rootfsInput{
		kver: k.kver, key: pl.Key, busybox: u.busybox, applets: applets, debRoots: u.debRoots, mods: k.mods,
	}); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	if err := makeExt4(ctx, tree, filepath.Join(staging, fileRootfs), RootfsSize); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	return nil
}

// writeManifest is stage 6, last: it removes the work directory and writes
// the manifest, which marks staging complete.
func writeManifest(work, staging string, pl plan, k builtKernel, start time.Time) (manifest, error) {
	m := manifest{
		Key: pl.Key, Recipe: recipeHash(), KernelVersion: k.kver, Compression: k.comp,
		PVHEntry: fmt.Sprintf("%#x", k.entry), Kernel: pl.Kernel, Packages: pl.Userland,
		BuiltAt: time.Now().UTC(), RootfsSize: RootfsSize,
		VmlinuxBytes: k.vmlinuxBytes,
	}
	for _, x := range k.mods {
		m.Modules = append(m.Modules, x.Rel)
	}
	if st, err := os.Stat(filepath.Join(staging, fileInitrd)); err == nil {
		m.InitrdBytes = st.Size()
	}
	if st, err := os.Stat(filepath.Join(staging, fileRootfs)); err == nil {
		if s, ok := st.Sys().(*syscall.Stat_t); ok {
			m.RootfsAllocated = s.Blocks * 512
		}
	}
	m.BuildSeconds = time.Since(start).Seconds()
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return m, err
	}
	if err := os.RemoveAll(work); err != nil {
		return m, err
	}
	if err := writeFileSync(filepath.Join(staging, fileManifest), append(b, '\n'), 0o644); err != nil {
		return m, err
	}
	return m, nil
}

// findVmlinuz locates boot/vmlinuz-<kver> in the unpacked kernel package,
// falling back to the only vmlinuz-* present (then its suffix is the version).
func findVmlinuz(kroot, kver string) (string, string, error) {
	p := filepath.Join(kroot, "boot", "vmlinuz-"+kver)
	if _, err := os.Stat(p); err == nil {
		return kver, p, nil
	}
	ms, _ := filepath.Glob(filepath.Join(kroot, "boot", "vmlinuz-*"))
	if len(ms) != 1 {
		return "", "", fmt.Errorf("kernel package has %d boot/vmlinuz-* files, want boot/vmlinuz-%s", len(ms), kver)
	}
	return strings.TrimPrefix(filepath.Base(ms[0]), "vmlinuz-"), ms[0], nil
}
