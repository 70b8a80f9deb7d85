package guestbuild

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// guestModules are loaded by the initramfs, dependencies first. In Debian's
// cloud kernel virtio is modular while ext4, af_packet, unix sockets, the 8250
// UART, devtmpfs and PVH are built in. The vsock transport is optional.
var guestModules = []string{
	"virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net", "virtio-rng", "virtio_console",
}

var optionalModules = []string{"vmw_vsock_virtio_transport"}

// kmodule is one kernel module of the closure.
type kmodule struct {
	Rel  string // path under lib/modules/<kver>/, without a compression suffix
	Data []byte // uncompressed .ko
	Deps []string
}

// moduleClosure runs `depmod -b` on the unpacked kernel and
// `modprobe -d ... --show-depends` for each wanted module, returning the
// modules in load order (each after its dependencies), decompressed.
func moduleClosure(ctx context.Context, t hostTools, kroot, kver string) ([]kmodule, error) {
	if _, err := run(ctx, "", t.depmod, "-b", kroot, kver); err != nil {
		return nil, err
	}
	moddir := filepath.Join(kroot, "lib", "modules", kver)
	deps, err := readModulesDep(filepath.Join(moddir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	var order []string
	seen := map[string]bool{}
	add := func(name string, required bool) error {
		out, err := run(ctx, "", t.modprobe, "-d", kroot, "-S", kver, "--show-depends", name)
		if err != nil {
			if required {
				return fmt.Errorf("module %s: %w", name, err)
			}
			return nil
		}
		for _, l := range strings.Split(string(out), "\n") {
			f := strings.Fields(l)
			if len(f) < 2 || f[0] != "insmod" {
				continue // "builtin NAME" needs nothing
			}
			rel, err := filepath.Rel(moddir, f[1])
			if err != nil || strings.HasPrefix(rel, "..") {
				return fmt.Errorf("modprobe named %s, outside %s", f[1], moddir)
			}
			if !seen[rel] {
				seen[rel] = true
				order = append(order, rel)
			}
		}
		return nil
	}
	for _, m := range guestModules {
		if err := add(m, true); err != nil {
			return nil, err
		}
	}
	for _, m := range optionalModules {
		if err := add(m, false); err != nil {
			return nil, err
		}
	}
	mods := make([]kmodule, 0, len(order))
	for _, rel := range order {
		data, err := readModule(filepath.Join(moddir, rel))
		if err != nil {
			return nil, err
		}
		var d []string
		for _, x := range deps[rel] {
			d = append(d, stripModSuffix(x))
		}
		mods = append(mods, kmodule{Rel: stripModSuffix(rel), Data: data, Deps: d})
	}
	return mods, nil
}

// readModulesDep parses depmod's modules.dep ("a.ko: b.ko c.ko").
func readModulesDep(path string) (map[string][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	res := map[string][]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok {
			res[k] = strings.Fields(v)
		}
	}
	return res, sc.Err()
}

func stripModSuffix(p string) string {
	for _, s := range []string{".xz", ".zst", ".gz"} {
		if strings.HasSuffix(p, ".ko"+s) {
			return strings.TrimSuffix(p, s)
		}
	}
	return p
}

// readModule returns a module's uncompressed bytes (.ko, .ko.xz, .ko.zst,
// .ko.gz): busybox insmod only loads plain ELF objects.
func readModule(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []byte
	switch {
	case strings.HasSuffix(path, ".ko.xz"):
		var r *xz.Reader
		if r, err = xz.NewReader(bytes.NewReader(raw)); err == nil {
			out, err = io.ReadAll(r)
		}
	case strings.HasSuffix(path, ".ko.zst"):
		var d *zstd.Decoder
		if d, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1)); err == nil {
			out, err = d.DecodeAll(raw, nil)
			d.Close()
		}
	case strings.HasSuffix(path, ".ko.gz"):
		var r *gzip.Reader
		if r, err = gzip.NewReader(bytes.NewReader(raw)); err == nil {
			out, err = io.ReadAll(r)
		}
	default:
		out = raw
	}
	if err != nil {
		return nil, fmt.Errorf("decompressing %s: %w", filepath.Base(path), err)
	}
	if !bytes.HasPrefix(out, []byte("\x7fELF")) {
		return nil, fmt.Errorf("%s is not an ELF module", filepath.Base(path))
	}
	return out, nil
}
