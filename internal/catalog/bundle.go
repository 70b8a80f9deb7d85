package catalog

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/banger-dev/banger/internal/trust"
)

// maxManifestBytes caps manifest.json inside a bundle.
const maxManifestBytes = 64 << 10

// maxWindow caps the zstd window a bundle may use (decoder memory).
const maxWindow = 1 << 27

// WriteBundle writes a bundle of kind to w: a deterministic tar (manifest.json
// first, then files sorted by name, then the modules tree in lexical order;
// mtime 0, uid/gid 0, no user or group names) compressed with zstd.
// manifest is serialized as manifest.json; files maps bundle entry names
// (rootfs.ext4; vmlinux, initrd.img, vmlinuz) to host paths of regular
// files; modulesDir, for a kernel, is a host directory packed as modules/
// ("" for none). The same rules the client enforces are applied here, so a
// bundle WriteBundle refuses is one no client would accept. It returns the
// bundle's unpacked size: the bytes of its tar stream before compression,
// which the index signs as Entry.UnpackedSize (and the client holds the
// bundle to).
func WriteBundle(w io.Writer, kind Kind, manifest Manifest, files map[string]string, modulesDir string) (unpacked int64, err error) {
	if !kind.Valid() {
		return 0, fmt.Errorf("bundle kind %q is not %q or %q", kind, KindImage, KindKernel)
	}
	if err := manifest.validate(kind); err != nil {
		return 0, err
	}
	if _, ok := files[ManifestFile]; ok {
		return 0, fmt.Errorf("%s is generated from the manifest; do not pass it as a file", ManifestFile)
	}
	if modulesDir != "" && kind != KindKernel {
		return 0, fmt.Errorf("only a kernel bundle has a %s/ tree", ModulesDir)
	}
	have := map[string]bool{ManifestFile: true}
	for name := range files {
		if err := checkEntry(kind, name, typeFile, ""); err != nil {
			return 0, err
		}
		have[name] = true
	}
	for _, r := range requiredEntries(kind) {
		if !have[r] {
			return 0, fmt.Errorf("%s bundle needs %s", aKind(kind), r)
		}
	}
	man, err := json.MarshalIndent(manifest, "", "  ")
	if err != nil {
		return 0, err
	}
	man = append(man, '\n')

	zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedBetterCompression),
		zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(1<<23))
	if err != nil {
		return 0, err
	}
	cw := &countWriter{w: zw}
	tw := tar.NewWriter(cw)
	if err := tw.WriteHeader(header(ManifestFile, tar.TypeReg, int64(len(man)), "")); err != nil {
		return 0, err
	}
	if _, err := tw.Write(man); err != nil {
		return 0, err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if err := addRegular(tw, n, files[n]); err != nil {
			return 0, err
		}
	}
	if modulesDir != "" {
		if err := addTree(tw, kind, modulesDir); err != nil {
			return 0, err
		}
	}
	if err := tw.Close(); err != nil {
		return 0, err
	}
	if err := zw.Close(); err != nil {
		return 0, err
	}
	return cw.n, nil
}

// countWriter counts what passes through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func header(name string, typ byte, size int64, linkname string) *tar.Header {
	mode := int64(0o444)
	switch typ {
	case tar.TypeDir:
		mode = 0o755
		name += "/"
	case tar.TypeSymlink:
		mode = 0o777
	}
	return &tar.Header{
		Typeflag: typ,
		Name:     name,
		Linkname: linkname,
		Mode:     mode,
		Size:     size,
		ModTime:  time.Unix(0, 0),
	}
}

func addRegular(tw *tar.Writer, name, hostPath string) error {
	f, err := os.Open(hostPath)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s (for %s) is not a regular file", hostPath, name)
	}
	if err := tw.WriteHeader(header(name, tar.TypeReg, fi.Size(), "")); err != nil {
		return err
	}
	n, err := io.Copy(tw, f)
	if err != nil {
		return fmt.Errorf("%s: %w", hostPath, err)
	}
	if n != fi.Size() {
		return fmt.Errorf("%s changed size while being packed", hostPath)
	}
	return nil
}

// addTree packs the host directory root as modules/: directories, regular
// files and symlinks, in lexical order, parents first.
func addTree(tw *tar.Writer, kind Kind, root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		name := ModulesDir
		if rel != "." {
			name = path.Join(ModulesDir, filepath.ToSlash(rel))
		}
		switch t := d.Type(); {
		case t.IsDir():
			if err := checkEntry(kind, name, typeDir, ""); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			return tw.WriteHeader(header(name, tar.TypeDir, 0, ""))
		case t&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := checkEntry(kind, name, typeSymlink, target); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			return tw.WriteHeader(header(name, tar.TypeSymlink, 0, target))
		case t.IsRegular():
			if err := checkEntry(kind, name, typeFile, ""); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			return addRegular(tw, name, p)
		default:
			return fmt.Errorf("%s is a %v; a bundle holds only directories, regular files and symlinks", p, t)
		}
	})
}

// extractLimits bound what one bundle may unpack to.
type extractLimits struct {
	// maxUnpacked caps both the bytes the zstd stream decompresses to and
	// the regular-file bytes written (a tar's sparse entries could make the
	// second larger than the first).
	maxUnpacked int64
	// capDesc says where maxUnpacked comes from, for the refusal.
	capDesc    string
	maxEntries int
}

// cappedReader counts the bytes read through it (the decompressed stream)
// and refuses, while streaming, to go past max.
type cappedReader struct {
	r    io.Reader
	n    int64
	max  int64
	desc string
}

func (c *cappedReader) Read(p []byte) (int, error) {
	if c.n > c.max {
		return 0, c.overflow() // sticky: nothing more is read once over
	}
	if rem := c.max - c.n; rem < int64(len(p))-1 {
		p = p[:rem+1] // read at most one byte past the cap
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.n > c.max {
		return n, c.overflow()
	}
	return n, err
}

func (c *cappedReader) overflow() error {
	return trust.Refuse(trust.ErrTooLarge, "unpacks to more than %d bytes, %s", c.max, c.desc)
}

// extractBundle reads a zstd-compressed bundle tar of kind from r and writes
// its entries into dir (an existing, empty directory). It refuses an entry
// the kind does not allow, a duplicate, an entry whose parent directory did
// not come first, and a bundle missing a required entry or whose manifest
// is invalid for kind. The decompressed stream may not exceed
// lim.maxUnpacked bytes: ErrTooLarge as soon as it does, and before a
// regular file whose header takes it past is created. It returns the parsed
// manifest and the decompressed size. The caller must read r to its end
// (and check its hash) before trusting the result, and must remove dir on
// error.
func extractBundle(r io.Reader, kind Kind, dir string, lim extractLimits) (*Manifest, int64, error) {
	zr, err := zstd.NewReader(r, zstd.WithDecoderMaxWindow(maxWindow), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, 0, err
	}
	defer zr.Close()
	cr := &cappedReader{r: zr, max: lim.maxUnpacked, desc: lim.capDesc}
	x := &extractor{kind: kind, dir: dir, lim: lim, stream: cr, seen: map[string]bool{}, dirs: map[string]bool{}}
	if err := x.run(tar.NewReader(cr)); err != nil {
		return nil, cr.n, err
	}
	// Whatever follows the tar's end inside the zstd stream is read (and so
	// hashed by the caller, and counted against the cap) but not kept.
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return nil, cr.n, streamErr(err)
	}
	return x.manifest, cr.n, nil
}

type extractor struct {
	kind     Kind
	dir      string
	lim      extractLimits
	stream   *cappedReader // the decompressed stream the tar is read from
	seen     map[string]bool
	dirs     map[string]bool
	entries  int
	unpacked int64
	manifest *Manifest
	buf      []byte
}

func (x *extractor) run(tr *tar.Reader) error {
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if errors.Is(err, tar.ErrInsecurePath) && hdr != nil {
			return trust.Refuse(ErrBadBundle, "entry %q is not a clean relative path", hdr.Name)
		}
		if err != nil {
			return streamErr(err)
		}
		if err := x.entry(tr, hdr); err != nil {
			return err
		}
	}
	for _, r := range requiredEntries(x.kind) {
		if !x.seen[r] {
			return trust.Refuse(ErrBadBundle, "%s bundle without %s", aKind(x.kind), r)
		}
	}
	return nil
}

// streamErr classifies an error from the zstd/tar stream: a context or
// network error is passed through, anything else is a corrupt bundle.
func streamErr(err error) error {
	if trust.IsRefusal(err) || errors.Is(err, errBody) {
		return err
	}
	return trust.RefuseWrap(ErrBadBundle, err, "corrupt bundle stream: %v", err)
}

func (x *extractor) entry(tr *tar.Reader, hdr *tar.Header) error {
	x.entries++
	if x.entries > x.lim.maxEntries {
		return trust.Refuse(ErrBadBundle, "bundle has more than %d entries", x.lim.maxEntries)
	}
	name := hdr.Name
	var t entryType
	switch hdr.Typeflag {
	case tar.TypeReg:
		t = typeFile
	case tar.TypeDir:
		t = typeDir
		name = strings.TrimSuffix(name, "/")
	case tar.TypeSymlink:
		t = typeSymlink
	default:
		return trust.Refuse(ErrBadBundle, "entry %q has tar type %q; a bundle holds only directories, regular files and symlinks", hdr.Name, hdr.Typeflag)
	}
	if err := checkEntry(x.kind, name, t, hdr.Linkname); err != nil {
		return trust.Refuse(ErrBadBundle, "%v", err)
	}
	if x.seen[name] {
		return trust.Refuse(ErrBadBundle, "entry %q appears twice", name)
	}
	x.seen[name] = true
	if parent := path.Dir(name); parent != "." && !x.dirs[parent] {
		return trust.Refuse(ErrBadBundle, "entry %q comes before (or without) its directory %q", name, parent)
	}
	dst := filepath.Join(x.dir, filepath.FromSlash(name))
	switch t {
	case typeDir:
		if err := os.Mkdir(dst, 0o755); err != nil {
			return err
		}
		x.dirs[name] = true
		return os.Chmod(dst, 0o755) // whatever the umask
	case typeSymlink:
		return os.Symlink(hdr.Linkname, dst)
	}
	if hdr.Size < 0 {
		return trust.Refuse(ErrBadBundle, "entry %q has a negative size", name)
	}
	// Refused before the file exists: its header says it takes the bundle
	// past the cap, counted in stream bytes or in (sparse-expanded) file bytes.
	if hdr.Size > x.lim.maxUnpacked-x.unpacked || hdr.Size > x.lim.maxUnpacked-x.stream.n {
		return trust.Refuse(trust.ErrTooLarge, "entry %q (%d bytes) unpacks to more than %d bytes, %s", name, hdr.Size, x.lim.maxUnpacked, x.lim.capDesc)
	}
	x.unpacked += hdr.Size
	if name == ManifestFile {
		return x.writeManifest(tr, hdr, dst)
	}
	return x.writeFile(tr, hdr.Size, dst)
}

func (x *extractor) writeManifest(tr *tar.Reader, hdr *tar.Header, dst string) error {
	if hdr.Size > maxManifestBytes {
		return trust.Refuse(ErrBadBundle, "%s is %d bytes; the cap is %d", ManifestFile, hdr.Size, maxManifestBytes)
	}
	data, err := io.ReadAll(tr)
	if err != nil {
		return streamErr(err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return trust.Refuse(ErrBadBundle, "%s is not valid JSON: %v", ManifestFile, err)
	}
	if err := m.validate(x.kind); err != nil {
		return trust.Refuse(ErrBadBundle, "%v", err)
	}
	x.manifest = &m
	return x.writeFile(bytes.NewReader(data), int64(len(data)), dst)
}

// writeFile creates dst (never following or replacing anything) 0444 and
// fills it with size bytes from r, leaving all-zero blocks as holes.
func (x *extractor) writeFile(r io.Reader, size int64, dst string) (err error) {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o444)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	if x.buf == nil {
		x.buf = make([]byte, 1<<20)
	}
	if err := sparseCopy(f, r, size, x.buf); err != nil {
		return err
	}
	return f.Chmod(0o444)
}

const holeBlock = 4096

var zeroBlock [holeBlock]byte

// sparseCopy writes size bytes from r to f, skipping all-zero 4 KiB blocks
// (leaving holes), and sets f's length to size.
func sparseCopy(f *os.File, r io.Reader, size int64, buf []byte) error {
	var off int64
	for off < size {
		n := int(min(int64(len(buf)), size-off))
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return streamErr(err)
		}
		for i := 0; i < n; {
			j := min(i+holeBlock, n)
			if bytes.Equal(buf[i:j], zeroBlock[:j-i]) {
				i = j
				continue
			}
			k := j
			for k < n {
				e := min(k+holeBlock, n)
				if bytes.Equal(buf[k:e], zeroBlock[:e-k]) {
					break
				}
				k = e
			}
			if _, err := f.WriteAt(buf[i:k], off+int64(i)); err != nil {
				return err
			}
			i = k
		}
		off += int64(n)
	}
	return f.Truncate(size)
}
