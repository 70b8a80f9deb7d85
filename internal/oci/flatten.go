package oci

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/banger-dev/banger/internal/ext4"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// Owner is the ownership and mode an entry has in the image, as opposed to
// the one its copy on the host has (ext4.SetOwners applies it).
type Owner ext4.Owner

// Tree is a flattened image: a host directory plus what the host copy does
// not carry.
type Tree struct {
	// Dir is the absolute path of the directory holding the files.
	Dir string
	// Owners has one entry per file, directory and symlink in Dir, keyed by
	// its clean path inside the tree with a leading "/" ("/" is the root,
	// "/usr/bin/su" a file). Entries reached through a symlinked parent are
	// keyed by their real path.
	Owners map[string]Owner
	// Bytes is the sum of the regular files' sizes (hardlinks counted once),
	// Inodes the number of inodes, root included.
	Bytes, Inodes int64
	// Skipped lists the entries not reproduced (device nodes, fifos,
	// sockets, unknown types), as "layer N: /path (kind)".
	Skipped []string

	// unpack counts what the layers unpacked, against the Limits.
	unpack unpackBudget
}

const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	opaqueMarker   = ".wh..wh..opq"
	maxSymlinkHops = 40
)

var (
	errEscape = errors.New("resolves outside the tree")
	errLoop   = errors.New("too many levels of symbolic links")
)

// Flatten replays the layer blobs, oldest first, into dest, which must not
// exist or be an empty directory; it is left with mode 0700, the image's
// root mode being recorded in Owners["/"]. Layers may be gzip, zstd or
// uncompressed tars (the content is sniffed, not the name). On error the
// partial tree is removed.
//
// Files are written owner-readable and -writable (directories also
// searchable) and owned by the calling process; the owner and full mode
// each tar header asked for are recorded in Tree.Owners. Paths are resolved
// one component at a time with Lstat, symlinks followed only inside the
// tree, so no entry can be written outside dest.
//
// What the layers unpack is capped by the default Limits (see
// FlattenWithLimits): past a cap Flatten stops with ErrTooLarge while the
// layer streams, and removes the partial tree.
func Flatten(ctx context.Context, layers []string, dest string) (*Tree, error) {
	return FlattenWithLimits(ctx, layers, dest, Limits{})
}

// FlattenWithLimits is Flatten with the given caps on what each layer, and
// the image, may unpack to.
func FlattenWithLimits(ctx context.Context, layers []string, dest string, lim Limits) (t *Tree, err error) {
	created, err := prepareDest(dest)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(dest)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err == nil {
			return
		}
		if created {
			os.RemoveAll(abs)
			return
		}
		entries, _ := os.ReadDir(abs)
		for _, e := range entries {
			os.RemoveAll(filepath.Join(abs, e.Name()))
		}
	}()
	t = &Tree{
		Dir:    abs,
		Owners: map[string]Owner{"/": {Mode: fs.ModeDir | 0o755}},
		unpack: unpackBudget{lim: lim},
	}
	for i, l := range layers {
		label := fmt.Sprintf("layer %d/%d (%s)", i+1, len(layers), shortBlobName(l))
		if err := t.applyLayer(ctx, label, l); err != nil {
			return nil, err
		}
	}
	if _, err := t.recount(); err != nil {
		return nil, err
	}
	return t, nil
}

func prepareDest(dest string) (created bool, err error) {
	entries, err := os.ReadDir(dest)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
			return false, err
		}
		if err := os.Mkdir(dest, 0o700); err != nil {
			return false, err
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("flatten destination: %w", err)
	case len(entries) > 0:
		return false, fmt.Errorf("flatten destination %s is not empty", dest)
	}
	return false, os.Chmod(dest, 0o700)
}

func shortBlobName(p string) string {
	b := filepath.Base(p)
	if len(b) == 64 && isHex(b) {
		return "sha256:" + b[:12] + "…"
	}
	return b
}

// layerReader sniffs the compression of a layer blob.
func layerReader(f io.Reader) (io.Reader, func(), error) {
	br := bufio.NewReaderSize(f, 1<<16)
	magic, err := br.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return zr, func() { zr.Close() }, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, nil, err
		}
		return zr, zr.Close, nil
	}
	return br, func() {}, nil
}

// layer is the state of one layer being applied: which entries it created
// (whiteouts only hide lower layers' entries) and which directories got new
// entries below them.
type layer struct {
	t       *Tree
	label   string
	touched map[string]bool
	hasNew  map[string]bool
}

func (t *Tree) applyLayer(ctx context.Context, label, blob string) error {
	f, err := os.Open(blob)
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	defer f.Close()
	r, done, err := layerReader(f)
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	defer done()
	t.unpack.layerStream, t.unpack.layerFiles = 0, 0
	l := &layer{t: t, label: label, touched: map[string]bool{}, hasNew: map[string]bool{}}
	tr := tar.NewReader(budgetReader{r: r, b: &t.unpack})
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if errors.Is(err, ErrTooLarge) {
			return fmt.Errorf("%s: %w", label, err)
		}
		if err != nil {
			return fmt.Errorf("%s: reading tar: %w", label, err)
		}
		if err := l.entry(hdr, tr); err != nil {
			return fmt.Errorf("%s: %q: %w", label, hdr.Name, err)
		}
	}
}

// cleanTarName validates a tar entry name and returns it cleaned and
// relative ("." for the root).
func cleanTarName(name string) (string, error) {
	if err := ext4.CheckName(name); err != nil {
		return "", err
	}
	c := path.Clean(name)
	if path.IsAbs(c) {
		return "", errors.New("unsafe path: absolute")
	}
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", errors.New("unsafe path: escapes the tree")
	}
	return c, nil
}

func headerOwner(hdr *tar.Header) Owner {
	return Owner{UID: hdr.Uid, GID: hdr.Gid, Mode: hdr.FileInfo().Mode()}
}

// diskPerm is the permission an entry gets on the host: the image's, plus
// what the extracting process needs to write it and mkfs to read it.
func diskPerm(m fs.FileMode, dir bool) fs.FileMode {
	if dir {
		return m.Perm() | 0o700
	}
	return m.Perm() | 0o600
}

func (l *layer) mark(key string) {
	l.touched[key] = true
	for p := path.Dir(key); ; p = path.Dir(p) {
		if l.hasNew[p] {
			break
		}
		l.hasNew[p] = true
		if p == "/" {
			break
		}
	}
}

func (l *layer) entry(hdr *tar.Header, body io.Reader) error {
	t := l.t
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil // pax_global_header: metadata, not a file
	}
	rel, err := cleanTarName(hdr.Name)
	if err != nil {
		return err
	}
	if rel == "." {
		if hdr.Typeflag != tar.TypeDir {
			return errors.New("root entry is not a directory")
		}
		t.Owners["/"] = headerOwner(hdr)
		return nil
	}
	dir, base := path.Split(rel)
	if strings.HasPrefix(base, whiteoutPrefix) {
		return l.whiteout(dir, base)
	}
	parent, err := t.resolveDir(dir, l.mark)
	if err != nil {
		return err
	}
	key := joinKey(parent, base)
	full := t.abs(key)

	var linkKey string
	if hdr.Typeflag == tar.TypeLink {
		if linkKey, err = t.linkTarget(hdr.Linkname); err != nil {
			return err
		}
		if linkKey == key {
			return nil
		}
	}

	if fi, err := os.Lstat(full); err == nil {
		if fi.IsDir() && hdr.Typeflag == tar.TypeDir {
			t.Owners[key] = headerOwner(hdr)
			l.mark(key)
			return nil
		}
		if err := t.removeAll(key); err != nil {
			return err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}

	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := os.Mkdir(full, diskPerm(hdr.FileInfo().Mode(), true)); err != nil {
			return err
		}
	case tar.TypeReg, tar.TypeGNUSparse:
		if err := t.unpack.file(hdr.Size); err != nil {
			return err
		}
		if err := writeFile(full, diskPerm(hdr.FileInfo().Mode(), false), body); err != nil {
			return err
		}
	case tar.TypeSymlink:
		if strings.IndexByte(hdr.Linkname, 0) >= 0 {
			return errors.New("symlink target contains NUL")
		}
		if err := os.Symlink(hdr.Linkname, full); err != nil {
			return err
		}
	case tar.TypeLink:
		if err := os.Link(t.abs(linkKey), full); err != nil {
			return err
		}
		o, ok := t.Owners[linkKey]
		if !ok {
			o = headerOwner(hdr)
		}
		t.Owners[key] = o
		l.mark(key)
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		kind := map[byte]string{tar.TypeChar: "char device", tar.TypeBlock: "block device", tar.TypeFifo: "fifo"}[hdr.Typeflag]
		t.Skipped = append(t.Skipped, fmt.Sprintf("%s: %s (%s)", l.label, key, kind))
		return nil
	default:
		t.Skipped = append(t.Skipped, fmt.Sprintf("%s: %s (tar type %q)", l.label, key, hdr.Typeflag))
		return nil
	}
	t.Owners[key] = headerOwner(hdr)
	l.mark(key)
	// File capabilities (e.g. ping's cap_net_raw) travel as an xattr, which
	// mkfs.ext4 -d copies. Best effort: it needs CAP_SETFCAP.
	if v, ok := hdr.PAXRecords["SCHILY.xattr.security.capability"]; ok && (hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeGNUSparse) {
		_ = unix.Lsetxattr(full, "security.capability", []byte(v), 0)
	}
	return nil
}

func writeFile(full string, perm fs.FileMode, body io.Reader) error {
	f, err := os.OpenFile(full, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// linkTarget resolves a hardlink's target, which must be an existing
// non-directory of the tree.
func (t *Tree) linkTarget(name string) (string, error) {
	rel, err := cleanTarName(name)
	if err != nil {
		return "", fmt.Errorf("hardlink target %q: %w", name, err)
	}
	dir, base := path.Split(rel)
	parent, err := t.resolveDir(dir, nil)
	if err != nil {
		return "", fmt.Errorf("hardlink target %q: %w", name, err)
	}
	key := joinKey(parent, base)
	fi, err := os.Lstat(t.abs(key))
	if err != nil {
		return "", fmt.Errorf("hardlink target %q: %w", name, err)
	}
	if fi.IsDir() {
		return "", fmt.Errorf("hardlink target %q is a directory", name)
	}
	return key, nil
}

// whiteout applies ".wh.<name>" and ".wh..wh..opq" found in dir.
func (l *layer) whiteout(dir, base string) error {
	parent, err := l.t.resolveDir(dir, nil)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil // nothing below to hide
	}
	if err != nil {
		return err
	}
	if base == opaqueMarker {
		return l.opaque(parent)
	}
	if strings.HasPrefix(base, whiteoutMeta) {
		return nil // aufs bookkeeping (.wh..wh.plnk and the like)
	}
	victim := strings.TrimPrefix(base, whiteoutPrefix)
	if victim == "" || victim == "." || victim == ".." {
		return errors.New("unsafe whiteout")
	}
	key := joinKey(parent, victim)
	if l.touched[key] {
		return nil // whiteouts never hide their own layer's entries
	}
	fi, err := os.Lstat(l.t.abs(key))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() && l.hasNew[key] {
		return l.opaque(key)
	}
	return l.t.removeAll(key)
}

// opaque removes everything below the directory key that this layer did not
// create.
func (l *layer) opaque(key string) error {
	full := l.t.abs(key)
	fi, err := os.Lstat(full)
	if err != nil || !fi.IsDir() {
		return nil
	}
	entries, err := os.ReadDir(full)
	if err != nil {
		return err
	}
	for _, e := range entries {
		child := joinKey(key, e.Name())
		switch {
		case l.touched[child] || l.hasNew[child]:
			if e.IsDir() {
				if err := l.opaque(child); err != nil {
					return err
				}
			}
		default:
			if err := l.t.removeAll(child); err != nil {
				return err
			}
		}
	}
	return nil
}
