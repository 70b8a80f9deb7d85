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
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The Debian guest: a Debian bookworm root filesystem built with mmdebstrap
// (systemd, openssh-server, git, curl, ...) that boots with the same kernel
// and initramfs as the tiny guest and keeps its contract (docs/guest.md):
// banger.* command line keys, /dev/vdb on /root, sshd on :22 with root by key
// only, one BANGER-READY line on ttyS0.

// debianRecipeVersion is bumped by hand when the Debian build changes in a way
// the embedded files and lists do not show.
const debianRecipeVersion = "debian-1"

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

// debianHeadroom is free space added to the content when sizing rootfs.ext4
// (sparse: only the content is allocated).
const debianHeadroom = 1 << 30

//go:embed debian
var debianFiles embed.FS

//go:embed debian.go
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

// debianKey names a Debian build: the recipe (code, files, lists, sources)
// and the tiny build whose kernel and initramfs it boots with. Package
// versions are not part of it: a build is kept until the recipe or the
// kernel changes (delete CacheDir/debian/ to rebuild with today's archive).
func debianKey(kernelKey string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\nkernel %s\npackages %v\nmasked %v\ndpkg %v\nsources %q\nheadroom %d\n",
		debianRecipeVersion, kernelKey, debianPackages, debianMasked, debianDpkgOpts, debianSourcesList(), debianHeadroom)
	hashFiles(h, debianFiles, debianSources)
	return debianSuite + "-" + hex.EncodeToString(h.Sum(nil))[:12]
}

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

// EnsureDebian returns a Debian bookworm guest: the kernel and initramfs of
// Ensure (Vmlinux, Vmlinuz, Initrd are that build's files) and a root
// filesystem built with mmdebstrap, cached under CacheDir/debian/<key>/ with
// the same lock and atomic publish rules as Ensure. A cold build needs root
// (mmdebstrap --mode=root), mmdebstrap and the Debian archive; a published
// build is returned at once.
func EnsureDebian(ctx context.Context, opts Options) (Artifacts, error) {
	k, err := Ensure(ctx, opts)
	if err != nil {
		return Artifacts{}, err
	}
	cache, err := filepath.Abs(opts.CacheDir)
	if err != nil {
		return Artifacts{}, err
	}
	root := filepath.Join(cache, "debian")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return Artifacts{}, fmt.Errorf("guestbuild: %w", err)
	}
	p := progress{opts.Progress}
	key := debianKey(k.Key)
	dir, err := ensurePublished(ctx, root, key, p, func(ctx context.Context, staging string) error {
		return buildDebian(ctx, root, staging, key, k, p)
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

// debianTools are the host programs a Debian build runs.
type debianTools struct{ mmdebstrap, unshare, mkfs, debugfs, depmod string }

func checkDebianTools() (debianTools, error) {
	var t debianTools
	for _, x := range []struct {
		dst       *string
		name, pkg string
	}{
		{&t.mmdebstrap, "mmdebstrap", "mmdebstrap"},
		{&t.unshare, "unshare", "util-linux"},
		{&t.mkfs, "mkfs.ext4", "e2fsprogs"},
		{&t.debugfs, "debugfs", "e2fsprogs"},
		{&t.depmod, "depmod", "kmod"},
	} {
		p, err := findTool(x.name, x.pkg)
		if err != nil {
			return t, errors.New(strings.TrimPrefix(err.Error(), "guestbuild: ")) // EnsureDebian adds it
		}
		*x.dst = p
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
func buildDebian(ctx context.Context, root, staging, key string, k Artifacts, p progress) error {
	start := time.Now()
	if os.Geteuid() != 0 {
		return fmt.Errorf("building the debian-%s image needs root (mmdebstrap --mode=root)", debianSuite)
	}
	t, err := checkDebianTools()
	if err != nil {
		return err
	}
	sources := debianSourcesList()
	if err := probeArchive(ctx, sources); err != nil {
		return err
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

	p.f("mmdebstrap %s (%s) ...", debianSuite, strings.Join(debianPackages, ","))
	args := []string{"--mount", "--propagation", "private", t.mmdebstrap,
		"--mode=root", "--variant=apt", "--include=" + strings.Join(debianPackages, ","),
		"--aptopt=Acquire::Retries \"3\""}
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
	if err := configureDebianTree(ctx, t, tree, key, k); err != nil {
		return fmt.Errorf("%s rootfs: %w", debianSuite, err)
	}
	pkgs, err := dpkgInstalled(tree)
	if err != nil {
		return err
	}

	content, err := treeBytes(tree)
	if err != nil {
		return err
	}
	size := roundUp(content+content/5+debianHeadroom, 64<<20)
	p.f("mkfs.ext4 -d (%d MiB content, %d MiB image) ...", content>>20, size>>20)
	img := filepath.Join(staging, fileRootfs)
	if _, err := run(ctx, "", t.mkfs, "-q", "-F", "-L", "banger-root", "-N", strconv.FormatInt(inodeCount(tree), 10),
		"-E", "root_owner=0:0", "-d", tree, img, strconv.FormatInt(size>>10, 10)+"k"); err != nil {
		return fmt.Errorf("%s rootfs: %w", debianSuite, err)
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
		Sources: sources, Include: debianPackages, Packages: pkgs, BuiltAt: time.Now().UTC(), RootfsBytes: size,
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
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("mmdebstrap failed (%v): %s (full log: %s)", err, mmdebstrapErrors(logPath), logPath)
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
	return lastLines(strings.TrimSpace(string(b)), 4)
}

// configureDebianTree turns mmdebstrap's tree into a banger guest, without
// chroot: units and their symlinks, sshd configuration, no host keys, /run
// symlinks, the kernel's modules, and no apt lists.
func configureDebianTree(ctx context.Context, t debianTools, dir, key string, k Artifacts) error {
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

	// The kernel's modules, as the tiny rootfs holds them (read with debugfs,
	// no mount), with a modules.dep from depmod so modprobe works.
	if err := os.MkdirAll(filepath.Join(dir, "lib/modules"), 0o755); err != nil {
		return err
	}
	tinyRoot := filepath.Join(k.Dir, fileRootfs)
	if _, err := run(ctx, "", t.debugfs, "-R", "rdump /lib/modules/"+k.KernelVersion+" "+filepath.Join(dir, "lib/modules"), tinyRoot); err != nil {
		return fmt.Errorf("modules from %s: %w", tinyRoot, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "lib/modules", k.KernelVersion, "modules.dep")); err != nil {
		return fmt.Errorf("modules from %s: %w", tinyRoot, err)
	}
	if _, err := run(ctx, "", t.depmod, "-b", dir, k.KernelVersion); err != nil {
		return err
	}
	return nil
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
