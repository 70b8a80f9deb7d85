package guestbuild

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/banger-dev/banger/internal/atomicfile"
	"github.com/banger-dev/banger/internal/digest"
	"github.com/banger-dev/banger/internal/sysexec"
)

// kernelMetaPackage names the Debian kernel flavour the guest boots.
const kernelMetaPackage = "linux-image-cloud-amd64"

// userlandPackages are unpacked into the initramfs and the root filesystem:
// busybox (static) and dropbear with every library it links against.
var userlandPackages = []string{
	"busybox-static", "dropbear-bin",
	"libc6", "libcrypt1", "zlib1g", "libtomcrypt1", "libtommath1", "libgmp10",
}

// KernelDebEnv names the environment variable that replaces the downloaded
// kernel with a local linux-image-*.deb.
const KernelDebEnv = "BANGER_KERNEL_DEB"

// debPkg is one Debian binary package at a fixed version.
type debPkg struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"arch,omitempty"`
	SHA256  string `json:"sha256"`
	// File is set for a local .deb (BANGER_KERNEL_DEB) instead of the archive.
	File string `json:"file,omitempty"`
}

// plan is what a build is made of; its key names the cache directory.
type plan struct {
	KernelVersion string   `json:"kernel_version"`
	Kernel        debPkg   `json:"kernel"`
	Userland      []debPkg `json:"userland"`
	Key           string   `json:"key"`
}

// hostTools are the absolute paths of the host programs a build runs
// (mkfs.ext4 and debugfs are the ext4 package's).
type hostTools struct {
	aptGet, aptCache, dpkgDeb, depmod, modprobe string
}

// findTool looks a program up in PATH and then in the sbin directories, which
// are often missing from a non-root PATH.
func findTool(name, pkg string) (string, error) {
	p, err := sysexec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("guestbuild: %s not found: install it with `apt-get install %s`", name, pkg)
	}
	return p, nil
}

// toolCheck is one host program a build needs: where its path goes (nil
// when only its presence is checked) and the apt package providing it.
type toolCheck struct {
	dst       *string
	name, pkg string
}

// findTools finds every program of checks, failing on the first missing one
// with the apt package that provides it.
func findTools(checks []toolCheck) error {
	for _, x := range checks {
		p, err := findTool(x.name, x.pkg)
		if err != nil {
			return err
		}
		if x.dst != nil {
			*x.dst = p
		}
	}
	return nil
}

// checkTools finds every host program a build needs.
func checkTools() (hostTools, error) {
	var t hostTools
	err := findTools([]toolCheck{
		{&t.aptCache, "apt-cache", "apt"},
		{&t.aptGet, "apt-get", "apt"},
		{&t.dpkgDeb, "dpkg-deb", "dpkg"},
		{nil, "mkfs.ext4", "e2fsprogs"},
		{&t.depmod, "depmod", "kmod"},
		{&t.modprobe, "modprobe", "kmod"},
	})
	return t, err
}

// runner runs the build's programs; tests swap in a sysexectest.Fake.
var runner sysexec.Runner = sysexec.Real

// run runs a command in dir in the C locale and returns its stdout; a
// failure names the command and carries the tail of its stderr.
func run(ctx context.Context, dir string, name string, args ...string) ([]byte, error) {
	res, err := runner.Run(ctx, sysexec.Cmd{Path: name, Args: args, Dir: dir, ExtraEnv: []string{"LC_ALL=C"}})
	if err != nil {
		return nil, err
	}
	return res.Stdout, nil
}

// aptStanza holds the fields of one `apt-cache show` record.
type aptStanza map[string]string

// aptShow runs `apt-cache show --no-all-versions` (the candidate version of
// each package) and returns the first record per package name.
func aptShow(ctx context.Context, aptCache string, pkgs ...string) (map[string]aptStanza, error) {
	out, err := run(ctx, "", aptCache, append([]string{"show", "--no-all-versions"}, pkgs...)...)
	if err != nil {
		return nil, err
	}
	res := map[string]aptStanza{}
	cur := aptStanza{}
	flush := func() {
		if n := cur["Package"]; n != "" {
			if _, dup := res[n]; !dup {
				res[n] = cur
			}
		}
		cur = aptStanza{}
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			flush()
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue // continuation of a multi-line field
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			cur[k] = strings.TrimSpace(v)
		}
	}
	flush()
	for _, p := range pkgs {
		if _, ok := res[p]; !ok {
			return nil, fmt.Errorf("apt-cache has no candidate for %s (run apt-get update?)", p)
		}
	}
	return res, nil
}

func stanzaPkg(s aptStanza) (debPkg, error) {
	p := debPkg{Name: s["Package"], Version: s["Version"], Arch: s["Architecture"], SHA256: s["SHA256"]}
	if p.Version == "" || p.SHA256 == "" {
		return p, fmt.Errorf("apt-cache record for %s lacks Version or SHA256", p.Name)
	}
	return p, nil
}

var kernelDepRe = regexp.MustCompile(`linux-image-([0-9][^ ,|()]*-cloud-amd64)\b`)

// resolvePackages asks apt which kernel linux-image-cloud-amd64 currently
// means and pins every package to its candidate version and checksum.
func resolvePackages(ctx context.Context, aptCache string) (kver string, kernel debPkg, userland []debPkg, err error) {
	recs, err := aptShow(ctx, aptCache, append([]string{kernelMetaPackage}, userlandPackages...)...)
	if err != nil {
		return "", debPkg{}, nil, err
	}
	m := kernelDepRe.FindStringSubmatch(recs[kernelMetaPackage]["Depends"])
	if m == nil {
		return "", debPkg{}, nil, fmt.Errorf("cannot find the kernel package in %s's Depends: %q",
			kernelMetaPackage, recs[kernelMetaPackage]["Depends"])
	}
	kver = m[1]
	krec, err := aptShow(ctx, aptCache, "linux-image-"+kver)
	if err != nil {
		return "", debPkg{}, nil, err
	}
	if kernel, err = stanzaPkg(krec["linux-image-"+kver]); err != nil {
		return "", debPkg{}, nil, err
	}
	for _, n := range userlandPackages {
		p, err := stanzaPkg(recs[n])
		if err != nil {
			return "", debPkg{}, nil, err
		}
		userland = append(userland, p)
	}
	return kver, kernel, userland, nil
}

// localKernelDeb describes a kernel .deb given by BANGER_KERNEL_DEB.
func localKernelDeb(ctx context.Context, dpkgDeb, path string) (kver string, p debPkg, err error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", p, err
	}
	out, err := run(ctx, "", dpkgDeb, "-f", abs, "Package", "Version", "Architecture")
	if err != nil {
		return "", p, fmt.Errorf("%s=%s: %w", KernelDebEnv, path, err)
	}
	f := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			f[k] = strings.TrimSpace(v)
		}
	}
	sum, err := digest.FileSHA256(abs)
	if err != nil {
		return "", p, err
	}
	p = debPkg{Name: f["Package"], Version: f["Version"], Arch: f["Architecture"], SHA256: sum, File: abs}
	if !strings.HasPrefix(p.Name, "linux-image-") {
		return "", p, fmt.Errorf("%s=%s is package %q, not a linux-image-*", KernelDebEnv, path, p.Name)
	}
	kver = strings.TrimSuffix(strings.TrimPrefix(p.Name, "linux-image-"), "-unsigned")
	return kver, p, nil
}

// aptStateFingerprint summarises (name, size, mtime) of the apt package lists
// and configuration: when it is unchanged, apt-cache would answer the same, so
// the last resolution can be reused without paying ~0.7 s per apt-cache call.
func aptStateFingerprint() string {
	h := sha256.New()
	add := func(pattern string) {
		ms, _ := filepath.Glob(pattern)
		sort.Strings(ms)
		for _, m := range ms {
			if st, err := os.Stat(m); err == nil && st.Mode().IsRegular() {
				fmt.Fprintf(h, "%s %d %d\n", m, st.Size(), st.ModTime().UnixNano())
			}
		}
	}
	for _, p := range []string{
		"/var/lib/apt/lists/*", "/etc/apt/sources.list", "/etc/apt/sources.list.d/*",
		"/etc/apt/preferences", "/etc/apt/preferences.d/*", "/etc/apt/apt.conf.d/*",
	} {
		add(p)
	}
	fmt.Fprintf(h, "%s\n", strings.Join(userlandPackages, " "))
	return hex.EncodeToString(h.Sum(nil))
}

// resolveMemo is the cached answer of resolvePackages.
type resolveMemo struct {
	Fingerprint string   `json:"fingerprint"`
	KernelVer   string   `json:"kernel_version"`
	Kernel      debPkg   `json:"kernel"`
	Userland    []debPkg `json:"userland"`
}

// makePlan pins the packages (from the memo when apt's state is unchanged)
// and computes the cache key.
func makePlan(ctx context.Context, root, kernelDeb string) (plan, error) {
	var pl plan
	memoPath := filepath.Join(root, "resolve.json")
	fp := aptStateFingerprint()
	var memo resolveMemo
	if b, err := os.ReadFile(memoPath); err == nil && json.Unmarshal(b, &memo) == nil &&
		memo.Fingerprint == fp && memo.KernelVer != "" && len(memo.Userland) == len(userlandPackages) {
		pl.KernelVersion, pl.Kernel, pl.Userland = memo.KernelVer, memo.Kernel, memo.Userland
	} else {
		aptCache, err := findTool("apt-cache", "apt")
		if err != nil {
			return pl, err
		}
		pl.KernelVersion, pl.Kernel, pl.Userland, err = resolvePackages(ctx, aptCache)
		if err != nil {
			return pl, err
		}
		memo = resolveMemo{Fingerprint: fp, KernelVer: pl.KernelVersion, Kernel: pl.Kernel, Userland: pl.Userland}
		if b, err := json.MarshalIndent(memo, "", "  "); err == nil {
			_ = atomicfile.WriteFile(memoPath, b, 0o644) // only an optimisation
		}
	}
	deb := kernelDeb
	if deb == "" {
		deb = os.Getenv(KernelDebEnv)
	}
	if deb != "" {
		dpkgDeb, err := findTool("dpkg-deb", "dpkg")
		if err != nil {
			return pl, err
		}
		if pl.KernelVersion, pl.Kernel, err = localKernelDeb(ctx, dpkgDeb, deb); err != nil {
			return pl, err
		}
	}
	h := sha256.New()
	fmt.Fprintf(h, "recipe %s\n", recipeHash())
	for _, p := range append([]debPkg{pl.Kernel}, pl.Userland...) {
		fmt.Fprintf(h, "%s %s %s %s\n", p.Name, p.Version, p.Arch, p.SHA256)
	}
	pl.Key = safeName(pl.KernelVersion) + "-" + hex.EncodeToString(h.Sum(nil))[:12]
	return pl, nil
}

func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_' || r == '+' {
			return r
		}
		return '_'
	}, s)
}

// debFileName is the name a pinned package has in the .deb cache.
func debFileName(p debPkg) string {
	v := strings.ReplaceAll(p.Version, ":", "%3a")
	return safeName(p.Name + "_" + v + "_" + p.Arch + ".deb")
}

// fetchDebs makes every package available as a verified .deb and returns
// their paths by package name. The archive is only asked for packages not
// already in debDir (checked against apt's SHA256); new downloads are
// verified, then moved into debDir, so a partial download is never cached.
func fetchDebs(ctx context.Context, t hostTools, debDir, tmpDir string, pkgs []debPkg) (map[string]string, error) {
	paths := map[string]string{}
	var missing []debPkg
	for _, p := range pkgs {
		if p.File != "" {
			paths[p.Name] = p.File
			continue
		}
		cached := filepath.Join(debDir, debFileName(p))
		if debCached(debDir, p) {
			paths[p.Name] = cached
			continue
		}
		os.Remove(cached)
		missing = append(missing, p)
	}
	if len(missing) == 0 {
		return paths, nil
	}
	if err := os.MkdirAll(debDir, 0o755); err != nil {
		return nil, err
	}
	dl, err := os.MkdirTemp(tmpDir, "apt-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dl)
	args := []string{"download", "-q"}
	for _, p := range missing {
		args = append(args, p.Name+"="+p.Version)
	}
	if _, err := run(ctx, dl, t.aptGet, args...); err != nil {
		return nil, err
	}
	for _, p := range missing {
		ms, _ := filepath.Glob(filepath.Join(dl, p.Name+"_*.deb"))
		if len(ms) != 1 {
			return nil, fmt.Errorf("apt-get download %s=%s left %d files", p.Name, p.Version, len(ms))
		}
		sum, err := digest.FileSHA256(ms[0])
		if err != nil {
			return nil, err
		}
		if sum != p.SHA256 {
			return nil, fmt.Errorf("%s: SHA256 %s, apt expects %s", filepath.Base(ms[0]), sum, p.SHA256)
		}
		dst := filepath.Join(debDir, debFileName(p))
		if err := os.Chmod(ms[0], 0o644); err != nil {
			return nil, err
		}
		if err := os.Rename(ms[0], dst); err != nil {
			return nil, err
		}
		paths[p.Name] = dst
	}
	return paths, nil
}

// debCached reports whether the cache holds p with the right checksum.
func debCached(debDir string, p debPkg) bool {
	sum, err := digest.FileSHA256(filepath.Join(debDir, debFileName(p)))
	return err == nil && sum == p.SHA256
}

// pruneDebs removes cached .debs that the current build did not use.
func pruneDebs(debDir string, keep map[string]string) {
	used := map[string]bool{}
	for _, p := range keep {
		used[filepath.Clean(p)] = true
	}
	ents, _ := os.ReadDir(debDir)
	for _, e := range ents {
		p := filepath.Join(debDir, e.Name())
		if !used[p] && strings.HasSuffix(e.Name(), ".deb") {
			os.Remove(p)
		}
	}
}

// unpackDeb extracts a .deb's files into dir (dpkg-deb -x: nothing is
// installed, no maintainer scripts run).
func unpackDeb(ctx context.Context, t hostTools, deb, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	_, err := run(ctx, "", t.dpkgDeb, "-x", deb, dir)
	return err
}

var errNoPublished = errors.New("no cached guest artifacts")
