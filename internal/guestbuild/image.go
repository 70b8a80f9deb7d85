package guestbuild

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/banger-dev/banger/internal/ext4"
)

// RootfsSize is the apparent size of rootfs.ext4 (sparse: ~15 MiB are used).
const RootfsSize = "128M"

// libDir is where the root filesystem keeps shared libraries (Debian's
// multiarch directory, searched by ld.so without an ld.so.cache).
const libDir = "lib/x86_64-linux-gnu"

// dropbearBinaries are copied from dropbear-bin.
var dropbearBinaries = []string{"usr/sbin/dropbear", "usr/bin/dropbearkey", "usr/bin/dbclient", "usr/bin/dropbearconvert"}

// buildInitramfs writes a gzip'd newc cpio holding /init, /bin/busybox and
// the modules (flat, /lib/modules/order lists them in load order).
func buildInitramfs(dst string, busybox []byte, mods []kmodule) error {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return err
	}
	c := NewCpioWriter(zw)
	for _, d := range []string{"bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"} {
		c.Dir(d, 0o755)
	}
	c.CharDev("dev/console", 0o600, 5, 1)
	c.CharDev("dev/null", 0o666, 1, 3)
	c.File("bin/busybox", 0o755, busybox)
	c.File("init", 0o755, mustScript("init"))
	var order strings.Builder
	names := map[string]bool{}
	for _, m := range mods {
		base := path.Base(m.Rel)
		if names[base] {
			return fmt.Errorf("two modules named %s", base)
		}
		names[base] = true
		c.File("lib/modules/"+base, 0o644, m.Data)
		order.WriteString(base + "\n")
	}
	c.File("lib/modules/order", 0o644, []byte(order.String()))
	if err := c.Close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return writeFileSync(dst, buf.Bytes(), 0o644)
}

// rootfsTree assembles a directory with explicit modes (umask-proof).
type rootfsTree struct{ root string }

func (t rootfsTree) p(rel string) string { return filepath.Join(t.root, filepath.FromSlash(rel)) }

func (t rootfsTree) dir(rel string, mode fs.FileMode) error {
	if err := os.MkdirAll(t.p(rel), 0o755); err != nil {
		return err
	}
	return os.Chmod(t.p(rel), mode)
}

func (t rootfsTree) file(rel string, mode fs.FileMode, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(t.p(rel)), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(t.p(rel), data, mode); err != nil {
		return err
	}
	return os.Chmod(t.p(rel), mode)
}

func (t rootfsTree) symlink(rel, target string) error {
	if err := os.MkdirAll(filepath.Dir(t.p(rel)), 0o755); err != nil {
		return err
	}
	os.Remove(t.p(rel))
	return os.Symlink(target, t.p(rel))
}

func (t rootfsTree) exists(rel string) bool {
	_, err := os.Lstat(t.p(rel))
	return err == nil
}

// rootfsInput is what buildRootfsTree puts into the root filesystem.
type rootfsInput struct {
	kver     string
	key      string
	busybox  []byte
	applets  []string // busybox --list-full: "bin/ls", "usr/sbin/ip", ...
	debRoots map[string]string
	mods     []kmodule
}

// buildRootfsTree lays out busybox (applet symlinks), dropbear and the shared
// libraries it needs, the modules, /etc and the boot scripts under dir.
func buildRootfsTree(dir string, in rootfsInput) error {
	t := rootfsTree{dir}
	steps := []error{}
	do := func(err error) { steps = append(steps, err) }
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", libDir, "lib64", "lib/modules",
		"etc/dropbear", "etc/banger", "dev", "proc", "sys", "run", "mnt", "home", "var/log", "var/lib"} {
		do(t.dir(d, 0o755))
	}
	do(t.dir(".", 0o755))
	do(t.dir("root", 0o700))
	do(t.dir("tmp", fs.ModeSticky|0o777))
	do(t.dir("var/tmp", fs.ModeSticky|0o777))
	do(t.symlink("var/run", "../run"))

	// busybox and its applets
	do(t.file("bin/busybox", 0o755, in.busybox))
	for _, a := range in.applets {
		a = strings.TrimPrefix(path.Clean("/"+a), "/")
		if a == "" || a == "linuxrc" || a == "bin/busybox" || t.exists(a) {
			continue
		}
		do(t.symlink(a, "/bin/busybox"))
	}
	if !t.exists("sbin/init") {
		do(t.symlink("sbin/init", "/bin/busybox"))
	}

	// dropbear and its shared libraries (from the unpacked .debs, not the host)
	db := in.debRoots["dropbear-bin"]
	var elfs []string
	for _, b := range dropbearBinaries {
		data, err := os.ReadFile(filepath.Join(db, b))
		if err != nil {
			return fmt.Errorf("dropbear-bin: %w", err)
		}
		do(t.file(b, 0o755, data))
		elfs = append(elfs, t.p(b))
	}
	if err := copyLibClosure(t, elfs, in.debRoots); err != nil {
		return err
	}

	// modules, with a modules.dep for busybox modprobe
	var dep strings.Builder
	for _, m := range in.mods {
		do(t.file("lib/modules/"+in.kver+"/"+m.Rel, 0o644, m.Data))
		fmt.Fprintf(&dep, "%s:", m.Rel)
		for _, d := range m.Deps {
			fmt.Fprintf(&dep, " %s", d)
		}
		dep.WriteString("\n")
	}
	do(t.file("lib/modules/"+in.kver+"/modules.dep", 0o644, []byte(dep.String())))

	// /etc
	do(t.file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")))
	do(t.file("etc/group", 0o644, []byte("root:x:0:\ntty:x:5:\nnogroup:x:65534:\n")))
	// "*": no password can match, so only keys log in (an empty field would
	// make dropbear reject the account).
	do(t.file("etc/shadow", 0o600, []byte("root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n")))
	do(t.file("etc/shells", 0o644, []byte("/bin/sh\n/bin/ash\n")))
	do(t.file("etc/hostname", 0o644, []byte("banger\n")))
	do(t.file("etc/fstab", 0o644, []byte("# banger guest: mounts are made by /etc/banger/rc.boot\n")))
	do(t.file("etc/nsswitch.conf", 0o644, []byte("passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n")))
	do(t.file("etc/profile", 0o644, mustScript("profile")))
	do(t.file("etc/inittab", 0o644, mustScript("inittab")))
	do(t.symlink("etc/hosts", "/run/hosts"))
	do(t.symlink("etc/resolv.conf", "/run/resolv.conf"))
	do(t.symlink("etc/mtab", "/proc/mounts"))
	for _, s := range []string{"rc.boot", "sshd", "ready", "console", "agent"} {
		do(t.file("etc/banger/"+s, 0o755, mustScript(s)))
	}
	do(t.file("etc/banger/release", 0o644, []byte(fmt.Sprintf("BANGER_GUEST_KEY=%s\nKERNEL_VERSION=%s\n", in.key, in.kver))))
	for _, err := range steps {
		if err != nil {
			return err
		}
	}
	return nil
}

// copyLibClosure copies the interpreter and every DT_NEEDED library (and
// theirs) of the given ELF files from the unpacked .debs into libDir.
func copyLibClosure(t rootfsTree, elfs []string, debRoots map[string]string) error {
	index, err := indexLibs(debRoots)
	if err != nil {
		return err
	}
	done := map[string]bool{}
	queue := append([]string(nil), elfs...)
	need := func(soname, by string) error {
		if done[soname] {
			return nil
		}
		done[soname] = true
		src, ok := index[soname]
		if !ok {
			return fmt.Errorf("%s needs %s, which none of the packages %v provide", filepath.Base(by), soname, sortedKeys(debRoots))
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := t.file(libDir+"/"+soname, 0o755, data); err != nil {
			return err
		}
		queue = append(queue, t.p(libDir+"/"+soname))
		return nil
	}
	for len(queue) > 0 {
		f := queue[0]
		queue = queue[1:]
		ef, err := elf.Open(f)
		if err != nil {
			return fmt.Errorf("%s: %w", filepath.Base(f), err)
		}
		libs, err := ef.ImportedLibraries()
		var interp string
		for _, p := range ef.Progs {
			if p.Type == elf.PT_INTERP {
				b := make([]byte, p.Filesz)
				if _, err := p.ReadAt(b, 0); err == nil {
					interp = string(bytes.TrimRight(b, "\x00"))
				}
			}
		}
		ef.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", filepath.Base(f), err)
		}
		if interp != "" {
			base := path.Base(interp)
			if err := need(base, f); err != nil {
				return err
			}
			if rel := strings.TrimPrefix(interp, "/"); rel != libDir+"/"+base && !t.exists(rel) {
				if err := t.symlink(rel, "/"+libDir+"/"+base); err != nil {
					return err
				}
			}
		}
		for _, l := range libs {
			if err := need(l, f); err != nil {
				return err
			}
		}
	}
	// glibc loads NSS modules with dlopen; files lookups are built into
	// libc.so.6 since 2.34, the stub is kept for older lookups.
	if src, ok := index["libnss_files.so.2"]; ok && !done["libnss_files.so.2"] {
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		return t.file(libDir+"/libnss_files.so.2", 0o755, data)
	}
	return nil
}

// indexLibs maps a library file name to its real file inside the unpacked
// .debs, following symlinks within each package root.
func indexLibs(debRoots map[string]string) (map[string]string, error) {
	index := map[string]string{}
	for _, name := range sortedKeys(debRoots) {
		root := debRoots[name]
		for _, d := range []string{"lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib"} {
			ents, err := os.ReadDir(filepath.Join(root, d))
			if err != nil {
				continue
			}
			for _, e := range ents {
				if !strings.Contains(e.Name(), ".so") {
					continue
				}
				if _, dup := index[e.Name()]; dup {
					continue
				}
				if real, err := resolveIn(root, path.Join(d, e.Name())); err == nil {
					index[e.Name()] = real
				}
			}
		}
	}
	return index, nil
}

// resolveIn follows symlinks of rel inside root, treating absolute targets as
// relative to root, and returns the path of the regular file reached.
func resolveIn(root, rel string) (string, error) {
	for i := 0; i < 16; i++ {
		p := filepath.Join(root, filepath.FromSlash(rel))
		st, err := os.Lstat(p)
		if err != nil {
			return "", err
		}
		if st.Mode().IsRegular() {
			return p, nil
		}
		if st.Mode()&fs.ModeSymlink == 0 {
			return "", fmt.Errorf("%s is not a file", p)
		}
		target, err := os.Readlink(p)
		if err != nil {
			return "", err
		}
		if path.IsAbs(target) {
			rel = strings.TrimPrefix(path.Clean(target), "/")
		} else {
			rel = path.Join(path.Dir(rel), target)
		}
		if strings.HasPrefix(rel, "../") {
			return "", fmt.Errorf("%s points outside the package", p)
		}
	}
	return "", fmt.Errorf("too many symlinks at %s", rel)
}

func sortedKeys(m map[string]string) []string {
	k := make([]string, 0, len(m))
	for x := range m {
		k = append(k, x)
	}
	sort.Strings(k)
	return k
}

// busyboxApplets lists the applet paths of a static busybox by running it
// (it is a static x86-64 binary, like the host).
func busyboxApplets(ctx context.Context, busybox string) ([]string, error) {
	out, err := run(ctx, "", busybox, "--list-full")
	if err != nil {
		return nil, fmt.Errorf("listing busybox applets: %w", err)
	}
	l := strings.Fields(string(out))
	if len(l) < 50 {
		return nil, fmt.Errorf("busybox --list-full printed only %d applets", len(l))
	}
	return l, nil
}

// isStaticELF reports whether data is an ELF executable without PT_INTERP.
func isStaticELF(data []byte) bool {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// makeExt4 builds the ext4 image from dir without mounting anything.
func makeExt4(ctx context.Context, dir, img, size string) error {
	if err := ext4.Make(ctx, img, dir, ext4.MkfsOptions{Label: "banger-root", Size: size}); err != nil {
		return err
	}
	return syncFile(img)
}

func writeFileSync(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(path, perm)
	}
	return err
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
