package guestbuild

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// What the dev box adds to the minimal Debian build that a Debian package
// does not: mise (the polyglot tool manager `vm run` bootstraps per-repo
// toolchains with) and the kernel's whole module tree.

// mise is published on the npm registry as a prebuilt binary; the version
// and the tarball's integrity (the registry's dist.integrity, SRI sha512)
// are pinned here, so a changed or substituted tarball is refused.
const (
	miseVersion   = "2026.9.15"
	miseTarball   = "https://registry.npmjs.org/@jdxcode/mise-linux-x64/-/mise-linux-x64-" + miseVersion + ".tgz"
	miseIntegrity = "sha512-ButPFGyztN0Rk/HOHvHuf+W80CkvQRAjbDWHvhGJc3PnL3e2KhCYZIOyjx8wPkhr9VJa/7sJZXpxtt5JLjsfaQ=="
	// Caps on what the registry can make us download and unpack.
	miseMaxTarball = 128 << 20
	miseMaxBinary  = 256 << 20
)

// MiseRegistryEnv overrides the npm registry base URL mise is fetched from
// (the integrity check is the same).
const MiseRegistryEnv = "BANGER_NPM_REGISTRY"

func miseURL() string {
	if r := strings.TrimRight(strings.TrimSpace(os.Getenv(MiseRegistryEnv)), "/"); r != "" {
		return r + strings.TrimPrefix(miseTarball, "https://registry.npmjs.org")
	}
	return miseTarball
}

// fetchMise returns the path of the mise binary of the pinned release,
// cached in dir: the tarball is downloaded (capped), checked against the
// pinned integrity, and bin/mise extracted (capped).
func fetchMise(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "mise-"+miseVersion)
	if st, err := os.Stat(bin); err == nil && st.Mode().IsRegular() {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tgz, err := os.CreateTemp(dir, ".mise-*.tgz")
	if err != nil {
		return "", err
	}
	defer os.Remove(tgz.Name())
	defer tgz.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, miseURL(), nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("mise %s: cannot reach the npm registry: %w", miseVersion, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("mise %s: the npm registry answered %s for %s", miseVersion, resp.Status, miseURL())
	}
	h := sha512.New()
	n, err := io.Copy(io.MultiWriter(tgz, h), io.LimitReader(resp.Body, miseMaxTarball+1))
	if err != nil {
		return "", fmt.Errorf("mise %s: download: %w", miseVersion, err)
	}
	if n > miseMaxTarball {
		return "", fmt.Errorf("mise %s: the tarball is larger than %d MiB; refusing it", miseVersion, miseMaxTarball>>20)
	}
	if got := "sha512-" + base64.StdEncoding.EncodeToString(h.Sum(nil)); got != miseIntegrity {
		return "", fmt.Errorf("mise %s: the tarball's integrity is %s, not the pinned %s; refusing it", miseVersion, got, miseIntegrity)
	}
	if _, err := tgz.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	if err := extractMise(tgz, bin); err != nil {
		return "", fmt.Errorf("mise %s: %w", miseVersion, err)
	}
	return bin, nil
}

// extractMise writes the tarball's package/bin/mise to dst (atomically).
func extractMise(r io.Reader, dst string) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return err
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return errors.New("the tarball has no package/bin/mise")
		}
		if err != nil {
			return err
		}
		if h.Name != "package/bin/mise" {
			continue
		}
		if h.Typeflag != tar.TypeReg || h.Size > miseMaxBinary {
			return fmt.Errorf("package/bin/mise is not a regular file of at most %d MiB", miseMaxBinary>>20)
		}
		tmp, err := os.CreateTemp(filepath.Dir(dst), ".mise-bin-*")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name())
		if _, err := io.Copy(tmp, io.LimitReader(tr, miseMaxBinary)); err != nil {
			tmp.Close()
			return err
		}
		if err := tmp.Chmod(0o755); err != nil {
			tmp.Close()
			return err
		}
		if err := tmp.Sync(); err != nil {
			tmp.Close()
			return err
		}
		if err := tmp.Close(); err != nil {
			return err
		}
		return os.Rename(tmp.Name(), dst)
	}
}

// miseProfile activates mise in interactive bash shells (`vm run` without a
// command, `vm ssh`): a repository's tools are on PATH once bootstrapped.
const miseProfile = `# banger: mise's tools on PATH in interactive shells (docs/devbox.md)
if [ -n "$BASH_VERSION" ] && [ -x /usr/local/bin/mise ]; then
	eval "$(/usr/local/bin/mise activate bash)"
fi
`

// installMise copies the binary into the tree and activates it for shells.
func installMise(tree, bin string) error {
	b, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	t := rootfsTree{tree}
	if err := t.dir("usr/local/bin", 0o755); err != nil {
		return err
	}
	if err := t.file("usr/local/bin/mise", 0o755, b); err != nil {
		return err
	}
	return t.file("etc/profile.d/banger-mise.sh", 0o644, []byte(miseProfile))
}

// installAllModules puts the whole module tree of k's kernel package into
// the tree's /lib/modules/<kver> (the package is the one Ensure booted,
// from its .deb cache, fetched again if it was pruned).
func installAllModules(ctx context.Context, tree string, k Artifacts, cache string) error {
	var m manifest
	b, err := os.ReadFile(k.Manifest)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("%s: %w", k.Manifest, err)
	}
	t, err := checkTools()
	if err != nil {
		return err
	}
	deb := m.Kernel.File
	if deb == "" {
		work, err := os.MkdirTemp(filepath.Join(cache, "guest"), ".kdeb-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(work)
		got, err := fetchDebs(ctx, t, filepath.Join(cache, "guest", "debs"), work, []debPkg{m.Kernel})
		if err != nil {
			return fmt.Errorf("kernel package for its modules: %w", err)
		}
		deb = got[m.Kernel.Name]
	}
	x, err := os.MkdirTemp(filepath.Dir(tree), ".kmod-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(x)
	if err := unpackDeb(ctx, t, deb, x); err != nil {
		return err
	}
	src := filepath.Join(x, "lib", "modules", k.KernelVersion)
	if _, err := os.Stat(src); err != nil {
		return fmt.Errorf("%s has no lib/modules/%s", filepath.Base(deb), k.KernelVersion)
	}
	dst := filepath.Join(tree, "lib", "modules", k.KernelVersion)
	if err := os.RemoveAll(dst); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.Rename(src, dst)
}
