package guestbuild

import (
	"bufio"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/ext4"
	"github.com/banger-dev/banger/internal/sysexec"
)

// The Debian guests: Debian bookworm root filesystems built with one
// mmdebstrap each, that boot with the same kernel and initramfs as the tiny
// guest and keep its contract (docs/guest.md): banger.* command line keys,
// /dev/vdb on /root, sshd on :22 with root by key only, one BANGER-READY line
// on ttyS0. Two recipes share this code: the minimal image (systemd,
// OpenSSH, git, curl) and the dev box, banger's default (the minimal image
// plus compilers, language toolchains, Docker and mise).

// debianRecipeVersion is bumped by hand when the Debian build changes in a way
// the embedded files and lists do not show.
const debianRecipeVersion = "debian-2"

// DebianMirrorEnv overrides the Debian archive the image is built from; it
// then replaces the default bookworm, bookworm-updates and
// bookworm-security sources with the single "deb MIRROR bookworm main".
const DebianMirrorEnv = "BANGER_DEBIAN_MIRROR"

const debianSuite = "bookworm"

// debianPackages are installed on top of mmdebstrap's apt variant (Essential
// packages plus apt). Recommends are not installed.
var debianPackages = []string{
	"systemd-sysv", "udev", "openssh-server", "iproute2", "kmod", "procps",
	"git", "ca-certificates", "curl", "netbase", "less", "xz-utils",
}

// devPackages are what the dev box adds: what `make test`, `go test`,
// `python3 -m pytest`, `npm test` and `docker run` need, and the usual tools
// around them.
var devPackages = []string{
	"build-essential", "make", "pkg-config", "gdb", "file", "patch",
	"python3", "python3-pip", "python3-venv", "python3-pytest", "python3-dev",
	"nodejs", "npm", "golang-go",
	"jq", "unzip", "zip", "rsync", "tmux", "vim-tiny", "sudo", "openssh-client", "gnupg", "wget",
	"docker.io", "containerd", "iptables", "apparmor", // the cloud kernel enables AppArmor: dockerd loads its profile with apparmor_parser
}

// debianRecipe is one Debian image banger builds.
type debianRecipe struct {
	name     string   // the image's name
	dir      string   // cache subdirectory and key prefix
	packages []string // on top of mmdebstrap's apt variant
	// allModules: the kernel's whole module tree in /lib/modules (Docker
	// loads overlay, bridge, veth and netfilter modules); otherwise only the
	// virtio modules the initramfs loads.
	allModules bool
	mise       bool  // mise (from the npm registry, pinned) in /usr/local/bin
	headroom   int64 // free space added to the content when sizing rootfs.ext4 (sparse)
}

// Image names of the built-in Debian images.
const (
	MinimalImage = "debian-bookworm-minimal"
	DevImage     = "debian-bookworm"
)

var (
	minimalRecipe = debianRecipe{name: MinimalImage, dir: "debian", packages: debianPackages, headroom: 1 << 30}
	devRecipe     = debianRecipe{name: DevImage, dir: "devbox", packages: append(append([]string{}, debianPackages...), devPackages...),
		allModules: true, mise: true, headroom: 2 << 30}
)

// debianMasked are units masked in the image: waits, timers and services that
// slow a TCG boot or need what the guest does not have (dbus, a keyboard).
var debianMasked = []string{
	"systemd-networkd-wait-online.service", "systemd-firstboot.service", "systemd-logind.service",
	"apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "fstrim.timer",
	"e2scrub_all.timer", "e2scrub_reap.service", "systemd-pstore.service", "systemd-repart.service",
	"getty@tty1.service", "getty-static.service", "systemd-udev-settle.service", "systemd-ask-password-wall.path",
	"systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount", "sys-kernel-debug.mount",
	"sys-kernel-tracing.mount", "dev-hugepages.mount",
}

// debianDpkgOpts keep documentation and translations out of the image.
var debianDpkgOpts = []string{
	"path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*",
	"path-include=/usr/share/doc/*/copyright", "path-exclude=/usr/share/locale/*",
	"path-exclude=/usr/share/info/*",
}

//go:embed debian
var debianFiles embed.FS

//go:embed debian.go devbox.go
var debianSources embed.FS

func debianFile(name string) []byte {
	b, err := debianFiles.ReadFile("debian/" + name)
	if err != nil {
		panic(err)
	}
	return b
}

// debianSourcesList is the list of sources lines mmdebstrap builds from (and
// leaves in the image's /etc/apt/sources.list).
func debianSourcesList() []string {
	if m := strings.TrimSpace(os.Getenv(DebianMirrorEnv)); m != "" {
		return []string{fmt.Sprintf("deb %s %s main", m, debianSuite)}
	}
	return []string{
		"deb http://deb.debian.org/debian bookworm main",
		"deb http://deb.debian.org/debian bookworm-updates main",
		"deb http://deb.debian.org/debian-security bookworm-security main",
	}
}

// key names a build of the recipe: the recipe (code, files, lists, sources)
// and the tiny build whose kernel and initramfs it boots with. Package
// versions are not part of it: a build is kept until the recipe or the
// kernel changes (delete CacheDir/<dir>/ to rebuild with today's archive).
func (r debianRecipe) key(kernelKey string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\nname %s\nkernel %s\npackages %v\nmasked %v\ndpkg %v\nsources %q\nheadroom %d\nmodules %v\n",
		debianRecipeVersion, r.name, kernelKey, r.packages, debianMasked, debianDpkgOpts, debianSourcesList(), r.headroom, r.allModules)
	if r.mise {
		fmt.Fprintf(h, "mise %s %s\n", miseVersion, miseIntegrity)
	}
	hashFiles(h, debianFiles, debianSources)
	return r.keyPrefix() + hex.EncodeToString(h.Sum(nil))[:12]
}

func (r debianRecipe) keyPrefix() string {
	if r.dir == "debian" {
		return debianSuite + "-"
	}
	return r.dir + "-" + debianSuite + "-"
}

// debianKey is the minimal image's key.
func debianKey(kernelKey string) string { return minimalRecipe.key(kernelKey) }

// debianManifest is written last into a Debian build.
type debianManifest struct {
	Key             string    `json:"key"`
	Suite           string    `json:"suite"`
	KernelKey       string    `json:"kernel_key"`
	KernelVersion   string    `json:"kernel_version"`
	Sources         []string  `json:"sources"`
	Include         []string  `json:"include"`
	Packages        []string  `json:"packages"` // name=version of every installed package
	BuiltAt         time.Time `json:"built_at"`
	BuildSeconds    float64   `json:"build_seconds"`
	RootfsBytes     int64     `json:"rootfs_bytes"`
	RootfsAllocated int64     `json:"rootfs_allocated_bytes"`
}

// EnsureDebian returns the minimal Debian bookworm guest (systemd, OpenSSH,
// git, curl): the kernel and initramfs of Ensure (Vmlinux, Vmlinuz, Initrd
// are that build's files) and a root filesystem built with mmdebstrap,
// cached under CacheDir/debian/<key>/ with the same lock and atomic publish
// rules as Ensure. A cold build needs root (mmdebstrap --mode=root),
// mmdebstrap and the Debian archive; a published build is returned at once.
func EnsureDebian(ctx context.Context, opts Options) (Artifacts, error) {
	return ensureRecipe(ctx, opts, minimalRecipe)
}

// EnsureDevbox returns the dev box, banger's default image: the minimal
// guest plus build-essential, Python, Node, Go, Docker, mise and the usual
// tools (devPackages), with the kernel's whole module tree. Cached under
// CacheDir/devbox/<key>/ like EnsureDebian.
func EnsureDevbox(ctx context.Context, opts Options) (Artifacts, error) {
	return ensureRecipe(ctx, opts, devRecipe)
}

// Builtin is how banger makes one of its own images.
type Builtin func(context.Context, Options) (Artifacts, error)

// Builtins are the images banger builds itself, by name.
var Builtins = map[string]Builtin{
	TinyImage:    Ensure,
	MinimalImage: EnsureDebian,
	DevImage:     EnsureDevbox,
}

// TinyImage is the busybox + dropbear image of Ensure.
const TinyImage = "tiny"

// BuiltinNames lists Builtins' names, sorted.
func BuiltinNames() []string {
	out := make([]string, 0, len(Builtins))
	for n := range Builtins {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// IsKeyOf reports whether a build key (Artifacts.Key) was made by the
// recipe of the built-in image name: a registered image whose key is not
// its name's recipe (e.g. debian-bookworm registered before it became the
// dev box) is rebuilt.
func IsKeyOf(name, key string) bool {
	switch name {
	case MinimalImage:
		return strings.HasPrefix(key, minimalRecipe.keyPrefix())
	case DevImage:
		return strings.HasPrefix(key, devRecipe.keyPrefix())
	case TinyImage:
		return !strings.HasPrefix(key, minimalRecipe.keyPrefix()) && !strings.HasPrefix(key, devRecipe.keyPrefix())
	}
	return false
}

func ensureRecipe(ctx context.Context, opts Options, r debianRecipe) (Artifacts, error) {
	k, err := Ensure(ctx, opts)
	if err != nil {
		return Artifacts{}, err
	}
	cache, err := filepath.Abs(opts.CacheDir)
	if err != nil {
		return Artifacts{}, err
	}
	root := filepath.Join(cache, r.dir)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return Artifacts{}, fmt.Errorf("guestbuild: %w", err)
	}
	p := progress{opts.Progress}
	key := r.key(k.Key)
	dir, err := ensurePublished(ctx, root, key, p, func(ctx context.Context, staging string) error {
		return buildDebian(ctx, r, root, cache, staging, key, k, p)
	})
	if err != nil {
		return Artifacts{}, fmt.Errorf("guestbuild: %w", err)
	}
	return Artifacts{
		KernelVersion: k.KernelVersion,
		Vmlinux:       k.Vmlinux,
		Vmlinuz:       k.Vmlinuz,
		Initrd:        k.Initrd,
		Rootfs:        filepath.Join(dir, fileRootfs),
		Dir:           dir,
		Key:           key,
		Manifest:      filepath.Join(dir, fileManifest),
	}, nil
}

// debianTools are the host programs a Debian build runs (mkfs.ext4 and
// debugfs are the ext4 package's).
type debianTools struct{ mmdebstrap, unshare, depmod string }

func checkDebianTools() (debianTools, error) {
	var t debianTools
	err := findTools([]toolCheck{
		{&t.mmdebstrap, "mmdebstrap", "mmdebstrap"},
		{&t.unshare, "unshare", "util-linux"},
		{nil, "mkfs.ext4", "e2fsprogs"},
		{nil, "debugfs", "e2fsprogs"},
		{&t.depmod, "depmod", "kmod"},
	})
	if err != nil {
		return t, errors.New(strings.TrimPrefix(err.Error(), "guestbuild: ")) // EnsureDebian adds it
	}
	return t, nil
}

// probeArchive checks that the first source's archive answers, so a machine
// without network fails with one line instead of mmdebstrap's log.
func probeArchive(ctx context.Context, sources []string) error {
	f := strings.Fields(sources[0])
	if len(f) < 3 || !strings.HasPrefix(f[1], "http") {
		return nil // file:, copy:, mirror+... : let mmdebstrap judge
	}
	url := strings.TrimRight(f[1], "/") + "/dists/" + f[2] + "/InRelease"
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the Debian archive (%s), needed to build the %s image: %v", url, debianSuite, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the Debian archive answered %s for %s, needed to build the %s image", resp.Status, url, debianSuite)
	}
	return nil
}

// buildDebian makes rootfs.ext4 and the manifest in staging, and hard-links
// the kernel files of k next to them (a published directory is complete on
// its own).
func buildDebian(ctx context.Context, r debianRecipe, root, cache, staging, key string, k Artifacts, p progress) error {
	start := time.Now()
	if os.Geteuid() != 0 {
		return fmt.Errorf("building the %s image needs root (mmdebstrap --mode=root)", r.name)
	}
	t, err := checkDebianTools()
	if err != nil {
		return err
	}
	sources := debianSourcesList()
	if err := probeArchive(ctx, sources); err != nil {
		return err
	}
	var miseBin string
	if r.mise {
		p.f("mise %s (npm registry, integrity checked) ...", miseVersion)
		if miseBin, err = fetchMise(ctx, filepath.Join(cache, "npm")); err != nil {
			return err
		}
	}
	// We hold the lock: trees left behind are from builds that died.
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tree-") {
			if err := removeTree(filepath.Join(root, e.Name())); err != nil {
				return err
			}
		}
	}
	// The tree lives next to staging, not in it: mmdebstrap --mode=root
	// mounts /proc, /sys and /dev inside it; it runs in its own mount
	// namespace so those mounts end with it, and removeTree checks anyway.
	tree, err := os.MkdirTemp(root, ".tree-")
	if err != nil {
		return err
	}
	defer removeTree(tree)
	if err := os.Chmod(tree, 0o755); err != nil {
		return err
	}

	p.f("mmdebstrap %s (%d packages and their dependencies) ...", debianSuite, len(r.packages))
	args := []string{"--mount", "--propagation", "private", t.mmdebstrap,
		"--mode=root", "--variant=apt", "--include=" + strings.Join(r.packages, ","),
		"--aptopt=Acquire::Retries \"3\"", "--aptopt=APT::Install-Recommends \"false\""}
	// Downloaded packages are kept between builds of the recipe (hard links
	// in and out of the tree; pruned to what the build installed).
	debCache := filepath.Join(root, ".debs")
	if err := os.MkdirAll(debCache, 0o755); err == nil {
		args = append(args, "--skip=download/empty", "--skip=essential/unlink",
			"--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/ && find "+shQuote(debCache)+" -maxdepth 1 -name '*.deb' -exec cp -l {} \"$1\"/var/cache/apt/archives/ \\; 2>/dev/null || true",
			"--customize-hook=find \"$1\"/var/cache/apt/archives/ -maxdepth 1 -name '*.deb' -exec cp -ln {} "+shQuote(debCache)+"/ \\; 2>/dev/null; rm -f \"$1\"/var/cache/apt/archives/*.deb")
	}
	for _, o := range debianDpkgOpts {
		args = append(args, "--dpkgopt="+o)
	}
	args = append(args, debianSuite, tree)
	args = append(args, sources...)
	log := filepath.Join(root, ".mmdebstrap.log")
	if err := runLogged(ctx, log, t.unshare, args...); err != nil {
		return err
	}

	p.f("configuring the guest (units, sshd, modules %s) ...", k.KernelVersion)
	if err := configureDebianTree(ctx, t, r, tree, key, k, cache); err != nil {
		return fmt.Errorf("%s rootfs: %w", r.name, err)
	}
	if miseBin != "" {
		if err := installMise(tree, miseBin); err != nil {
			return fmt.Errorf("%s rootfs: %w", r.name, err)
		}
	}
	pkgs, err := dpkgInstalled(tree)
	if err != nil {
		return err
	}
	pruneDebCache(debCache, pkgs)

	content, err := treeBytes(tree)
	if err != nil {
		return err
	}
	size := roundUp(content+content/5+r.headroom, 64<<20)
	p.f("mkfs.ext4 -d (%d MiB content, %d MiB image) ...", content>>20, size>>20)
	img := filepath.Join(staging, fileRootfs)
	if err := ext4.Make(ctx, img, tree, ext4.MkfsOptions{Label: "banger-root", Inodes: inodeCount(tree),
		Size: strconv.FormatInt(size>>10, 10) + "k"}); err != nil {
		return fmt.Errorf("%s rootfs: %w", r.name, err)
	}
	if err := syncFile(img); err != nil {
		return err
	}
	for src, name := range map[string]string{k.Vmlinux: fileVmlinux, k.Vmlinuz: fileVmlinuz, k.Initrd: fileInitrd} {
		if err := linkOrCopy(src, filepath.Join(staging, name)); err != nil {
			return err
		}
	}

	m := debianManifest{
		Key: key, Suite: debianSuite, KernelKey: k.Key, KernelVersion: k.KernelVersion,
		Sources: sources, Include: r.packages, Packages: pkgs, BuiltAt: time.Now().UTC(), RootfsBytes: size,
	}
	if st, err := os.Stat(img); err == nil {
		if s, ok := st.Sys().(*syscall.Stat_t); ok {
			m.RootfsAllocated = s.Blocks * 512
		}
	}
	m.BuildSeconds = time.Since(start).Seconds()
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(staging, fileManifest), append(b, '\n'), 0o644); err != nil {
		return err
	}
	os.Remove(log)
	p.f("built %s in %.1fs", key, m.BuildSeconds)
	return nil
}

// runLogged runs a long command with its output in logPath; a failure reports
// the last error lines. Cancellation sends SIGTERM first so mmdebstrap can
// clean up.
func runLogged(ctx context.Context, logPath, name string, args ...string) error {
	lf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer lf.Close()
	_, err = runner.Run(ctx, sysexec.Cmd{Path: name, Args: args, ExtraEnv: []string{"LC_ALL=C"}, Stdout: lf, Stderr: lf,
		Cancel: sysexec.Terminate, WaitDelay: 30 * time.Second})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// The status alone: the log has the rest.
		status := err
		var se *sysexec.Error
		if errors.As(err, &se) && se.Err != nil {
			status = se.Err
		}
		return fmt.Errorf("mmdebstrap failed (%v): %s (full log: %s)", status, mmdebstrapErrors(logPath), logPath)
	}
	return nil
}

// mmdebstrapErrors picks the E: lines (or the last lines) of a log.
func mmdebstrapErrors(logPath string) string {
	b, _ := os.ReadFile(logPath)
	var errs []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "E: ") {
			errs = append(errs, strings.TrimSpace(l))
		}
	}
	if len(errs) > 0 {
		if len(errs) > 4 {
			errs = errs[:4]
		}
		return strings.Join(errs, " | ")
	}
	return sysexec.OneLine(sysexec.LastLines(string(b), 4))
}

// configureDebianTree turns mmdebstrap's tree into a banger guest, without
// chroot: units and their symlinks, sshd configuration, no host keys, /run
// symlinks, the kernel's modules, and no apt lists.
func configureDebianTree(ctx context.Context, t debianTools, rc debianRecipe, dir, key string, k Artifacts, cache string) error {
	r := rootfsTree{dir}
	var steps []error
	do := func(err error) { steps = append(steps, err) }

	// Host keys are made on each VM's first boot.
	keys, _ := filepath.Glob(filepath.Join(dir, "etc/ssh/ssh_host_*"))
	for _, f := range keys {
		do(os.Remove(f))
	}
	do(r.file("etc/ssh/sshd_config.d/banger.conf", 0o644, debianFile("sshd-banger.conf")))

	do(r.file("usr/lib/banger/boot", 0o755, debianFile("boot")))
	do(r.file("usr/lib/banger/ready", 0o755, debianFile("ready")))
	do(r.file("etc/systemd/system/banger-boot.service", 0o644, debianFile("banger-boot.service")))
	do(r.file("etc/systemd/system/banger-ready.service", 0o644, debianFile("banger-ready.service")))
	do(r.symlink("etc/systemd/system/sysinit.target.wants/banger-boot.service", "/etc/systemd/system/banger-boot.service"))
	do(r.symlink("etc/systemd/system/multi-user.target.wants/banger-ready.service", "/etc/systemd/system/banger-ready.service"))
	do(r.file("etc/systemd/system/ssh.service.d/banger.conf", 0o644, debianFile("ssh-override.conf")))
	do(r.file("etc/systemd/system/banger-agent.service", 0o644, debianFile("banger-agent.service")))
	do(r.symlink("etc/systemd/system/multi-user.target.wants/banger-agent.service", "/etc/systemd/system/banger-agent.service"))
	do(r.file("etc/systemd/system/serial-getty@ttyS0.service.d/banger.conf", 0o644, debianFile("serial-getty-override.conf")))
	for _, u := range debianMasked {
		do(r.symlink("etc/systemd/system/"+u, "/dev/null"))
	}
	// A quiet console: no status lines between the banger lines, journald to its own files only.
	do(r.file("etc/systemd/system.conf.d/banger.conf", 0o644, []byte("[Manager]\nShowStatus=no\nDefaultTimeoutStartSec=30s\nDefaultTimeoutStopSec=5s\n")))
	do(r.file("etc/systemd/journald.conf.d/banger.conf", 0o644, []byte("[Journal]\nForwardToConsole=no\nForwardToWall=no\nRuntimeMaxUse=16M\nSystemMaxUse=32M\n")))

	do(r.file("etc/hostname", 0o644, []byte("banger\n")))
	do(r.file("etc/fstab", 0o644, []byte("# banger guest: / is mounted by the initramfs, /root (the work disk /dev/vdb) by banger-boot.service\n")))
	do(r.symlink("etc/hosts", "/run/hosts"))
	do(r.symlink("etc/resolv.conf", "/run/resolv.conf"))
	do(r.file("etc/banger/release", 0o644, []byte(fmt.Sprintf("BANGER_GUEST_KEY=%s\nBANGER_KERNEL_KEY=%s\nKERNEL_VERSION=%s\n", key, k.Key, k.KernelVersion))))
	do(os.WriteFile(filepath.Join(dir, "etc/machine-id"), nil, 0o444)) // each VM makes its own

	// apt's downloaded lists are stale by the time a VM boots: `apt-get update` first.
	lists, _ := filepath.Glob(filepath.Join(dir, "var/lib/apt/lists/*"))
	for _, f := range lists {
		if filepath.Base(f) != "lock" && filepath.Base(f) != "partial" {
			do(os.RemoveAll(f))
		}
	}
	bins, _ := filepath.Glob(filepath.Join(dir, "var/cache/apt/*.bin"))
	for _, f := range bins {
		do(os.Remove(f))
	}
	for _, err := range steps {
		if err != nil {
			return err
		}
	}

	// The kernel's modules, with a modules.dep from depmod so modprobe
	// works: all of them (the dev box), or those the tiny rootfs holds (read
	// with debugfs, no mount).
	if err := os.MkdirAll(filepath.Join(dir, "lib/modules"), 0o755); err != nil {
		return err
	}
	if rc.allModules {
		if err := installAllModules(ctx, dir, k, cache); err != nil {
			return fmt.Errorf("kernel modules: %w", err)
		}
	} else {
		tinyRoot := filepath.Join(k.Dir, fileRootfs)
		if err := ext4.Rdump(ctx, tinyRoot, "/lib/modules/"+k.KernelVersion, filepath.Join(dir, "lib/modules")); err != nil {
			return fmt.Errorf("modules from %s: %w", tinyRoot, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "lib/modules", k.KernelVersion, "modules.dep")); err != nil {
			return fmt.Errorf("modules from %s: %w", tinyRoot, err)
		}
	}
	if _, err := run(ctx, "", t.depmod, "-b", dir, k.KernelVersion); err != nil {
		return err
	}
	return nil
}

// shQuote quotes s for sh.
func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// pruneDebCache removes the cached .debs of packages the build did not
// install at that version.
func pruneDebCache(dir string, installed []string) {
	keep := map[string]bool{}
	for _, nv := range installed {
		name, ver, _ := strings.Cut(nv, "=")
		keep[name+"_"+strings.ReplaceAll(ver, ":", "%3a")] = true
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		n := e.Name()
		i := strings.LastIndexByte(n, '_')
		if i < 0 || !strings.HasSuffix(n, ".deb") || !keep[n[:i]] {
			os.Remove(filepath.Join(dir, n))
		}
	}
}

// dpkgInstalled lists name=version of the installed packages.
func dpkgInstalled(dir string) ([]string, error) {
	f, err := os.Open(filepath.Join(dir, "var/lib/dpkg/status"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	var name, ver string
	installed := false
	flush := func() {
		if name != "" && installed {
			out = append(out, name+"="+ver)
		}
		name, ver, installed = "", "", false
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		switch {
		case l == "":
			flush()
		case strings.HasPrefix(l, "Package: "):
			name = strings.TrimPrefix(l, "Package: ")
		case strings.HasPrefix(l, "Version: "):
			ver = strings.TrimPrefix(l, "Version: ")
		case strings.HasPrefix(l, "Status: "):
			installed = strings.HasSuffix(l, " installed")
		}
	}
	flush()
	sort.Strings(out)
	return out, sc.Err()
}

// treeBytes sums the space the tree's files take in 4 KiB blocks.
func treeBytes(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		total += 4096
		if d.Type().IsRegular() {
			st, err := d.Info()
			if err != nil {
				return err
			}
			total += roundUp(st.Size(), 4096)
		}
		return nil
	})
	return total, err
}

// inodeCount is the tree's entries plus room for as many again and then some.
func inodeCount(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(string, fs.DirEntry, error) error { n++; return nil })
	return 2*n + 65536
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// linkOrCopy hard-links src to dst, copying when a link is impossible.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return writeFileSync(dst, b, 0o644)
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeTree removes a build tree after detaching anything still mounted in
// it; it refuses when a mount cannot be detached (RemoveAll would otherwise
// walk into the host's /dev or /proc).
func removeTree(dir string) error {
	for _, mp := range mountsUnder(dir) {
		syscall.Unmount(mp, syscall.MNT_DETACH)
	}
	if left := mountsUnder(dir); len(left) > 0 {
		return fmt.Errorf("not removing %s: %s is still mounted", dir, left[0])
	}
	if err := os.RemoveAll(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
