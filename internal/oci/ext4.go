package oci

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

const (
	mib = int64(1) << 20
	// MinExt4Size is the smallest image BuildExt4 makes.
	MinExt4Size = 256 * mib
	// inodeSlack is added to twice the tree's inode count.
	inodeSlack = 16384
	// inodeSize is passed to mkfs (small filesystems would get 128).
	inodeSize = 256
	// mkfsAttempts bounds the retries with a doubled size when the
	// estimate was too small.
	mkfsAttempts = 3
)

// ext4Size returns the image size and inode count for a tree: content*1.5
// plus the inode tables and headroom, at least MinExt4Size, rounded up to a
// MiB; twice the tree's inodes plus slack, and never fewer than mkfs's
// default ratio (one per 16 KiB) would give, so the headroom stays usable.
func ext4Size(s treeStats, headroom int64) (size, inodes int64) {
	headroom = max(headroom, 0)
	content := max(s.bytes, s.alloc)
	size = content + content/2 + headroom + 16*mib
	inodes = max(s.inodes*2+inodeSlack, size/16384)
	size += inodes * inodeSize
	size = max(size, MinExt4Size)
	size = (size + mib - 1) / mib * mib
	return size, inodes
}

// BuildExt4 makes out, a sparse ext4 image holding t, without mounting
// anything: mkfs.ext4 -d copies t.Dir, then one batched debugfs pass sets
// uid, gid and mode on every inode whose copy differs from t.Owners (all of
// them when the tree was extracted by a non-root user). The image is sized
// from the content (see ext4Size) plus headroom bytes. out is written through
// a temporary file in its directory and renamed into place, so on failure
// nothing is left at out.
func BuildExt4(ctx context.Context, t *Tree, out string, headroom int64) (err error) {
	mkfs, err := tool("mkfs.ext4")
	if err != nil {
		return err
	}
	debugfs, err := tool("debugfs")
	if err != nil {
		return err
	}
	stats, err := t.recount()
	if err != nil {
		return fmt.Errorf("scanning %s: %w", t.Dir, err)
	}
	script, err := t.ownerScript()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	img, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-*")
	if err != nil {
		return err
	}
	img.Close()
	defer func() {
		if err != nil {
			os.Remove(img.Name())
		}
	}()

	size, inodes := ext4Size(stats, headroom)
	for attempt := 1; ; attempt++ {
		if err := os.Truncate(img.Name(), 0); err != nil {
			return err
		}
		if err := os.Truncate(img.Name(), size); err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, mkfs, "-F", "-q", "-b", "4096", "-I", strconv.Itoa(inodeSize),
			"-N", strconv.FormatInt(inodes, 10), "-d", t.Dir, "-E", "root_owner=0:0", img.Name())
		outb, err := cmd.CombinedOutput()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		msg := strings.TrimSpace(string(outb))
		if attempt < mkfsAttempts && outOfSpace(msg) {
			size *= 2
			inodes *= 2
			continue
		}
		return fmt.Errorf("mkfs.ext4 -d %s (%s, %d inodes): %v: %s", t.Dir, humanBytes(size), inodes, err, msg)
	}

	if len(script) > 0 {
		sf, err := os.CreateTemp("", "banger-debugfs-*.script")
		if err != nil {
			return err
		}
		defer os.Remove(sf.Name())
		if _, err := sf.Write(script); err != nil {
			sf.Close()
			return err
		}
		if err := sf.Close(); err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, debugfs, "-w", "-f", sf.Name(), img.Name())
		var stderr bytes.Buffer
		cmd.Stdout = nil // it echoes every command
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("debugfs: %v: %s", err, strings.TrimSpace(stderr.String()))
		}
		// debugfs reports failed requests on stderr but still exits 0.
		if msg := debugfsErrors(stderr.String()); msg != "" {
			return fmt.Errorf("debugfs setting owners and modes: %s", msg)
		}
	}
	return os.Rename(img.Name(), out)
}

func outOfSpace(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "no space") || strings.Contains(m, "could not allocate") ||
		strings.Contains(m, "no free space") || strings.Contains(m, "inode")
}

// debugfsErrors drops debugfs's banner and returns whatever else it said on
// stderr.
func debugfsErrors(stderr string) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(stderr))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "debugfs ") {
			continue
		}
		lines = append(lines, l)
		if len(lines) == 10 {
			lines = append(lines, "…")
			break
		}
	}
	return strings.Join(lines, "; ")
}

// unixPerm maps the permission part of an fs.FileMode to st_mode bits.
func unixPerm(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= syscall.S_ISUID
	}
	if m&fs.ModeSetgid != 0 {
		p |= syscall.S_ISGID
	}
	if m&fs.ModeSticky != 0 {
		p |= syscall.S_ISVTX
	}
	return p
}

// ownerScript returns the debugfs commands that turn the owners and modes
// mkfs copied from the host files into those of t.Owners. The root is always
// set: mkfs does not take its mode from the source directory.
func (t *Tree) ownerScript() ([]byte, error) {
	keys := make([]string, 0, len(t.Owners))
	for k := range t.Owners {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	for _, k := range keys {
		o := t.Owners[k]
		if err := checkName(k); err != nil {
			return nil, err
		}
		if o.UID < 0 || o.GID < 0 || int64(o.UID) > 1<<32-2 || int64(o.GID) > 1<<32-2 {
			return nil, fmt.Errorf("%s: uid/gid %d:%d out of range", k, o.UID, o.GID)
		}
		fi, err := os.Lstat(t.abs(k))
		if err != nil {
			return nil, err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil, fmt.Errorf("%s: no stat data", k)
		}
		mode := st.Mode&syscall.S_IFMT | unixPerm(o.Mode)
		root := k == "/"
		// debugfs quotes with "…" and knows no escapes; names with '"' or
		// control characters were refused when the tree was built.
		q := `"` + k + `"`
		if root || st.Uid != uint32(o.UID) {
			fmt.Fprintf(&b, "sif %s uid %d\n", q, o.UID)
		}
		if root || st.Gid != uint32(o.GID) {
			fmt.Fprintf(&b, "sif %s gid %d\n", q, o.GID)
		}
		if root || st.Mode != mode {
			fmt.Fprintf(&b, "sif %s mode 0%o\n", q, mode)
		}
	}
	return b.Bytes(), nil
}

// tool finds an e2fsprogs binary, also in the sbin directories a non-root
// PATH often lacks.
func tool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errors.New(name + " not found: install e2fsprogs")
}
