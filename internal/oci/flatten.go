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

// Default caps on what an image import unpacks (config: oci.max_layer_size,
// oci.max_image_size).
const (
	DefaultMaxLayerBytes int64 = 16 << 30
	DefaultMaxImageBytes int64 = 32 << 30
)

// ErrTooLarge: a layer, or an image's layers together, unpack to more than
// their cap. The refusal happens while the layer streams, before a file
// whose header would cross the cap is created.
var ErrTooLarge = errors.New("image unpacks past its size cap")

// Limits bound what Flatten unpacks from layers a registry served. Each is
// counted twice, and both counts are capped: the bytes the layer's
// decompressed tar stream holds, and the bytes of the regular files it
// writes (a sparse tar entry can declare more file bytes than its stream
// holds). Zero fields mean the defaults.
type Limits struct {
	// MaxLayerBytes caps one layer; 0 means DefaultMaxLayerBytes.
	MaxLayerBytes int64
	// MaxImageBytes caps all of an image's layers together (files a later
	// layer deletes still count); 0 means DefaultMaxImageBytes.
	MaxImageBytes int64
}

func (l Limits) layerCap() int64 {
	if l.MaxLayerBytes > 0 {
		return l.MaxLayerBytes
	}
	return DefaultMaxLayerBytes
}

func (l Limits) imageCap() int64 {
	if l.MaxImageBytes > 0 {
		return l.MaxImageBytes
	}
	return DefaultMaxImageBytes
}

// unpackBudget is what the layers so far unpacked: stream and file bytes,
// of the current layer and of the image.
type unpackBudget struct {
	lim                     Limits
	layerStream, layerFiles int64
	imageStream, imageFiles int64
}

// tooLarge is an ErrTooLarge refusal with its own one-line message.
type tooLarge struct{ msg string }

func (e *tooLarge) Error() string        { return e.msg }
func (e *tooLarge) Is(target error) bool { return target == ErrTooLarge }

func (b *unpackBudget) overLayer() error {
	return &tooLarge{fmt.Sprintf("unpacks to more than %s, the cap for one layer (oci.max_layer_size); refusing", humanBytes(b.lim.layerCap()))}
}

func (b *unpackBudget) overImage() error {
	return &tooLarge{fmt.Sprintf("the image unpacks to more than %s, the cap for one image (oci.max_image_size); refusing", humanBytes(b.lim.imageCap()))}
}

// stream counts n more decompressed bytes.
func (b *unpackBudget) stream(n int64) error {
	b.layerStream += n
	b.imageStream += n
	if b.layerStream > b.lim.layerCap() {
		return b.overLayer()
	}
	if b.imageStream > b.lim.imageCap() {
		return b.overImage()
	}
	return nil
}

// file reserves a regular file of size bytes before it is created: it is
// refused if it would take the layer or the image past a cap, counted in
// file bytes or in stream bytes (its content is still to come).
func (b *unpackBudget) file(size int64) error {
	if size > b.lim.layerCap()-b.layerFiles || size > b.lim.layerCap()-b.layerStream {
		return b.overLayer()
	}
	if size > b.lim.imageCap()-b.imageFiles || size > b.lim.imageCap()-b.imageStream {
		return b.overImage()
	}
	b.layerFiles += size
	b.imageFiles += size
	return nil
}

// budgetReader counts a layer's decompressed stream and fails a read that
// takes it past a cap: the refusal comes while streaming.
type budgetReader struct {
	r io.Reader
	b *unpackBudget
}

func (r budgetReader) Read(p []byte) (int, error) {
	if err := r.b.stream(0); err != nil {
		return 0, err // sticky: nothing more is read once over
	}
	room := min(r.b.lim.layerCap()-r.b.layerStream, r.b.lim.imageCap()-r.b.imageStream)
	if room < int64(len(p))-1 {
		p = p[:room+1] // read at most one byte past a cap
	}
	n, err := r.r.Read(p)
	if berr := r.b.stream(int64(n)); berr != nil {
		return n, berr
	}
	return n, err
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

// removeAll deletes key and everything below it, on disk and in Owners.
func (t *Tree) removeAll(key string) error {
	full := t.abs(key)
	fi, err := os.Lstat(full)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			delete(t.Owners, key)
			return nil
		}
		return err
	}
	if fi.IsDir() {
		err := filepath.WalkDir(full, func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			delete(t.Owners, t.keyOf(p))
			return nil
		})
		if err != nil {
			return err
		}
	}
	delete(t.Owners, key)
	return os.RemoveAll(full)
}

func joinKey(parent, base string) string {
	if parent == "/" {
		return "/" + base
	}
	return parent + "/" + base
}

// abs maps a key to the host path.
func (t *Tree) abs(key string) string {
	return filepath.Join(t.Dir, filepath.FromSlash(key))
}

// keyOf maps a host path inside Dir to its key.
func (t *Tree) keyOf(p string) string {
	rel, err := filepath.Rel(t.Dir, p)
	if err != nil || rel == "." {
		return "/"
	}
	return "/" + filepath.ToSlash(rel)
}

// walk resolves rel inside the tree, one component at a time with Lstat:
// symlinks are followed (absolute targets are relative to Dir, the last
// component only when followLast), ".." above the root is refused. Missing
// components are created as root-owned 0755 directories when mkdir is set
// (and reported to it), otherwise the error wraps fs.ErrNotExist. It returns
// the key of the resolved entry; every component before the last is a real
// directory.
func (t *Tree) walk(rel string, followLast bool, mkdir func(key string)) (string, error) {
	var cur []string
	todo := splitPath(rel)
	hops := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		if c == ".." {
			if len(cur) == 0 {
				return "", fmt.Errorf("%s: %w", rel, errEscape)
			}
			cur = cur[:len(cur)-1]
			continue
		}
		key := "/" + strings.Join(append(cur, c), "/")
		full := t.abs(key)
		last := len(todo) == 0
		fi, err := os.Lstat(full)
		if errors.Is(err, fs.ErrNotExist) && mkdir != nil {
			if err := os.Mkdir(full, 0o755); err != nil {
				return "", err
			}
			t.Owners[key] = Owner{Mode: fs.ModeDir | 0o755}
			mkdir(key)
			cur = append(cur, c)
			continue
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", key, err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 && (!last || followLast) {
			if hops++; hops > maxSymlinkHops {
				return "", fmt.Errorf("%s: %w", rel, errLoop)
			}
			target, err := os.Readlink(full)
			if err != nil {
				return "", err
			}
			if strings.HasPrefix(target, "/") {
				cur = cur[:0]
			}
			todo = append(splitPath(target), todo...)
			continue
		}
		if !last && !fi.IsDir() {
			return "", fmt.Errorf("%s: %w", key, syscall.ENOTDIR)
		}
		cur = append(cur, c)
	}
	return "/" + strings.Join(cur, "/"), nil
}

// resolveDir resolves rel to a directory of the tree, creating missing
// components when mkdir is set.
func (t *Tree) resolveDir(rel string, mkdir func(key string)) (string, error) {
	key, err := t.walk(rel, true, mkdir)
	if err != nil {
		return "", err
	}
	fi, err := os.Lstat(t.abs(key))
	if err != nil {
		return "", err
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("%s: %w", key, syscall.ENOTDIR)
	}
	return key, nil
}

func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

// cleanRel validates a caller-supplied path and splits it into its parent
// and base name.
func cleanRel(rel string) (dir, base string, err error) {
	if err := ext4.CheckName(rel); err != nil {
		return "", "", fmt.Errorf("%q: %w", rel, err)
	}
	c := path.Clean("/" + rel)
	if c == "/" {
		return "", "", fmt.Errorf("%q: is the root", rel)
	}
	dir, base = path.Split(c)
	return dir, base, nil
}

// prepareAdd resolves the parent of rel (creating it) and clears the way for
// a new non-directory entry.
func (t *Tree) prepareAdd(rel string) (string, error) {
	dir, base, err := cleanRel(rel)
	if err != nil {
		return "", err
	}
	parent, err := t.resolveDir(dir, func(string) {})
	if err != nil {
		return "", err
	}
	key := joinKey(parent, base)
	fi, err := os.Lstat(t.abs(key))
	switch {
	case err == nil && fi.IsDir():
		return "", fmt.Errorf("%s: is a directory", key)
	case err == nil:
		if fi.Mode().IsRegular() && nlink(fi) <= 1 {
			t.Bytes -= fi.Size()
			t.Inodes--
		}
		if err := t.removeAll(key); err != nil {
			return "", err
		}
	case !errors.Is(err, fs.ErrNotExist):
		return "", err
	}
	return key, nil
}

// AddFile writes a root-owned regular file at rel (relative to the tree
// root; a leading "/" is allowed), replacing any non-directory there and
// creating missing parents as root-owned 0755 directories. Symlinked
// parents are followed inside the tree. mode may carry setuid, setgid and
// sticky.
func (t *Tree) AddFile(rel string, mode fs.FileMode, data []byte) error {
	key, err := t.prepareAdd(rel)
	if err != nil {
		return err
	}
	if err := writeFile(t.abs(key), diskPerm(mode, false), bytes.NewReader(data)); err != nil {
		return err
	}
	t.Owners[key] = Owner{Mode: mode & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)}
	t.Bytes += int64(len(data))
	t.Inodes++
	return nil
}

// AddSymlink creates a root-owned symlink at rel pointing to target (stored
// as is), replacing any non-directory there.
func (t *Tree) AddSymlink(rel, target string) error {
	if target == "" || strings.IndexByte(target, 0) >= 0 {
		return fmt.Errorf("symlink %q: invalid target %q", rel, target)
	}
	key, err := t.prepareAdd(rel)
	if err != nil {
		return err
	}
	if err := os.Symlink(target, t.abs(key)); err != nil {
		return err
	}
	t.Owners[key] = Owner{Mode: fs.ModeSymlink | 0o777}
	t.Inodes++
	return nil
}

// Has reports whether rel exists in the tree. Symlinked parents are
// followed inside the tree, the last component is not.
func (t *Tree) Has(rel string) bool {
	if path.Clean("/"+rel) == "/" {
		return ext4.CheckName(rel) == nil
	}
	dir, base, err := cleanRel(rel)
	if err != nil {
		return false
	}
	parent, err := t.resolveDir(dir, nil)
	if err != nil {
		return false
	}
	_, err = os.Lstat(t.abs(joinKey(parent, base)))
	return err == nil
}

// ReadFile reads the regular file at rel, following symlinks inside the tree
// as the guest would (absolute targets are relative to the tree root), e.g.
// /etc/os-release -> ../usr/lib/os-release. Targets resolving above the root
// are refused.
func (t *Tree) ReadFile(rel string) ([]byte, error) {
	if err := ext4.CheckName(rel); err != nil {
		return nil, fmt.Errorf("%q: %w", rel, err)
	}
	key, err := t.walk(rel, true, nil)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(t.abs(key), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", key)
	}
	return io.ReadAll(f)
}

func nlink(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Nlink)
	}
	return 1
}

// treeStats is what sizing a filesystem for the tree needs.
type treeStats struct {
	bytes  int64 // regular file sizes, hardlinks once
	alloc  int64 // the same rounded to 4 KiB blocks, plus directory and long-symlink blocks
	inodes int64
}

// recount walks Dir, refreshes Bytes and Inodes, gives entries missing from
// Owners a root owner and drops Owners entries that are not on disk.
func (t *Tree) recount() (treeStats, error) {
	var s treeStats
	seen := make(map[string]bool, len(t.Owners))
	inodes := map[[2]uint64]bool{}
	err := filepath.WalkDir(t.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		key := t.keyOf(p)
		seen[key] = true
		if _, ok := t.Owners[key]; !ok {
			t.Owners[key] = Owner{Mode: fi.Mode().Type() | fi.Mode().Perm()}
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 && !fi.IsDir() {
			id := [2]uint64{uint64(st.Dev), st.Ino}
			if inodes[id] {
				return nil
			}
			inodes[id] = true
		}
		s.inodes++
		switch {
		case fi.Mode().IsRegular():
			s.bytes += fi.Size()
			s.alloc += (fi.Size() + 4095) &^ 4095
		case fi.IsDir():
			s.alloc += 4096
		case fi.Mode()&fs.ModeSymlink != 0 && fi.Size() >= 60:
			s.alloc += 4096
		}
		return nil
	})
	if err != nil {
		return s, err
	}
	for k := range t.Owners {
		if !seen[k] {
			delete(t.Owners, k)
		}
	}
	t.Bytes, t.Inodes = s.bytes, s.inodes
	return s, nil
}
