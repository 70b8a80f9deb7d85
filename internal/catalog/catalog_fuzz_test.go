package catalog_test

// Fuzz targets for what a catalog serves: index.json (after its signature
// verified, ParseIndex) and the bundles Pull streams into a staging
// directory. scripts/fuzz.sh lists them. Names carry an "fz" prefix so they
// cannot collide with the package's other test helpers.

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/klauspost/compress/zstd"

	"github.com/banger-dev/banger/internal/catalog"
	"github.com/banger-dev/banger/internal/trust"
)

const fzSum = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func fzIndex(kind catalog.Kind, entries ...catalog.Entry) []byte {
	ix := catalog.Index{Schema: catalog.SchemaVersion, Kind: kind, GeneratedAt: "2026-01-02T03:04:05Z", Entries: entries}
	if ix.Entries == nil {
		ix.Entries = []catalog.Entry{}
	}
	b, _ := json.MarshalIndent(ix, "", "  ")
	return b
}

func fzOneLine(t *testing.T, err error) {
	t.Helper()
	if strings.ContainsAny(err.Error(), "\n\r") {
		t.Fatalf("error is not one line: %q", err.Error())
	}
}

// FuzzParseIndex: ParseIndex never panics and refuses with ErrBadIndex in
// one line. An index it accepts has schema 1 and a known kind; every entry
// has a unique name that is one safe path component (so DirName can never be
// ".", "..", hidden, or the staging dir), a 64-digit lower-case sha256, a
// size in range, a printable one-line description, and a bundle URL that
// resolves to an http(s) URL without credentials whose file name is the
// sha256. The accepted index survives a JSON round trip unchanged.
func FuzzParseIndex(f *testing.F) {
	img := catalog.Entry{Name: "debian-bookworm", Description: "Debian 12 with banger's guest kit", Version: "2026.01.02",
		Distro: "debian", Arch: catalog.ArchAMD64, Kernel: "linux-6.1", Bundle: catalog.BundleFileName(fzSum), SHA256: fzSum, Size: 123456}
	krn := catalog.Entry{Name: "linux-6.1", Version: "6.1.0", Arch: catalog.ArchAMD64, KernelVersion: "6.1.0-28-amd64",
		Bundle: "https://mirror.example/blobs/" + catalog.BundleFileName(fzSum), SHA256: fzSum, Size: 1}
	f.Add(fzIndex(catalog.KindImage, img))
	f.Add(fzIndex(catalog.KindKernel, krn))
	f.Add(fzIndex(catalog.KindImage))
	rel := img
	rel.Name, rel.Bundle = "rel", "../blobs/"+catalog.BundleFileName(fzSum)
	f.Add(fzIndex(catalog.KindImage, img, rel))
	f.Add(fzIndex(catalog.KindImage, img, img))
	bad := img
	bad.Name, bad.Bundle = "..", "https://user:pw@x/"+catalog.BundleFileName(fzSum)+"?q"
	f.Add(fzIndex(catalog.KindImage, bad))
	f.Add([]byte(`{"schema":1,"kind":"image","generated_at":"2026-01-02T03:04:05Z","entries":null} {}`))
	f.Add([]byte(`{"schema":2}`))

	f.Fuzz(func(t *testing.T, data []byte) {
		ix, err := catalog.ParseIndex(data)
		if err != nil {
			if !errors.Is(err, catalog.ErrBadIndex) {
				t.Fatalf("refusal is not ErrBadIndex: %v", err)
			}
			if ix != nil {
				t.Fatal("refused but returned an index")
			}
			fzOneLine(t, err)
			return
		}
		if ix.Schema != catalog.SchemaVersion || !ix.Kind.Valid() {
			t.Fatalf("accepted schema %d kind %q", ix.Schema, ix.Kind)
		}
		if _, err := time.Parse(time.RFC3339, ix.GeneratedAt); err != nil {
			t.Fatalf("accepted generated_at %q", ix.GeneratedAt)
		}
		if ix.Entries == nil {
			t.Fatal("accepted index has nil Entries")
		}
		const indexURL = "https://catalog.example/images/index.json"
		seen := map[string]bool{}
		for _, e := range ix.Entries {
			if seen[e.Name] {
				t.Fatalf("%q listed twice", e.Name)
			}
			seen[e.Name] = true
			dn := catalog.DirName(e)
			for _, p := range []string{e.Name, dn} {
				if p == "" || p == "." || p == ".." || strings.HasPrefix(p, ".") || strings.ContainsAny(p, "/\\\x00") || filepath.Base(p) != p || p == catalog.StagingDir {
					t.Fatalf("entry %q: %q is not one safe, visible path component", e.Name, p)
				}
			}
			if len(e.Name) > 63 {
				t.Fatalf("entry name %q is over 63 bytes", e.Name)
			}
			if len(e.SHA256) != 64 || strings.Trim(e.SHA256, "0123456789abcdef") != "" {
				t.Fatalf("%q: sha256 %q", e.Name, e.SHA256)
			}
			if e.Size <= 0 || e.Size > 1<<40 {
				t.Fatalf("%q: size %d", e.Name, e.Size)
			}
			if len(e.Description) > 512 || !utf8.ValidString(e.Description) || strings.IndexFunc(e.Description, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
				t.Fatalf("%q: description %q", e.Name, e.Description)
			}
			if e.Arch != catalog.ArchAMD64 {
				t.Fatalf("%q: arch %q", e.Name, e.Arch)
			}
			if err := catalog.ValidateEntry(ix.Kind, e); err != nil {
				t.Fatalf("accepted entry fails ValidateEntry: %v", err)
			}
			got, err := catalog.ResolveBundleURL(indexURL, e.Bundle)
			if err != nil {
				t.Fatalf("%q: accepted bundle %q does not resolve: %v", e.Name, e.Bundle, err)
			}
			u, err := url.Parse(got)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
				t.Fatalf("%q: bundle %q resolves to %q", e.Name, e.Bundle, got)
			}
			if path.Base(u.Path) != catalog.BundleFileName(e.SHA256) {
				t.Fatalf("%q: bundle %q resolves to %q, not a file named after its sha256", e.Name, e.Bundle, got)
			}
			if found, ok := ix.Find(e.Name); !ok || found != e {
				t.Fatalf("Find(%q) = %+v, %v", e.Name, found, ok)
			}
		}
		out, err := json.Marshal(ix)
		if err != nil {
			t.Fatal(err)
		}
		again, err := catalog.ParseIndex(out)
		if err != nil {
			t.Fatalf("re-encoded index refused: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(ix, again) {
			t.Fatalf("round trip changed the index:\n got %+v\nwant %+v", again, ix)
		}
	})
}

// fzTransport serves one bundle from memory for any GET, so Pull runs
// without a network or a server goroutine.
type fzTransport struct{ body []byte }

func (tr fzTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Status: "200 OK", Header: http.Header{}, Request: r,
		ContentLength: int64(len(tr.body)), Body: io.NopCloser(bytes.NewReader(tr.body))}, nil
}

// fzBundles builds real bundles with WriteBundle: an image and a kernel with
// initrd, vmlinuz and a modules tree holding relative and absolute symlinks.
func fzBundles(tb testing.TB) (image, kernel []byte) {
	tb.Helper()
	dir := tb.TempDir()
	write := func(rel, body string) string {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			tb.Fatal(err)
		}
		return p
	}
	rootfs := write("rootfs.ext4", strings.Repeat("\x00", 8192)+"ext4"+strings.Repeat("\x00", 100))
	vmlinux := write("vmlinux", "\x7fELF kernel")
	initrd := write("initrd.img", "initrd")
	vmlinuz := write("vmlinuz", "bzImage")
	write("modules/6.1.0/kernel/a.ko", "module a")
	for target, link := range map[string]string{"kernel/a.ko": "modules/6.1.0/b.ko", "/lib/modules/6.1.0": "modules/build"} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			tb.Fatal(err)
		}
	}
	var img, krn bytes.Buffer
	man := catalog.Manifest{Schema: 1, Kind: catalog.KindImage, Name: fzName, Version: fzVersion, Kernel: "linux-6.1", CreatedAt: "2026-01-02T03:04:05Z"}
	if _, err := catalog.WriteBundle(&img, catalog.KindImage, man, map[string]string{catalog.RootfsFile: rootfs}, ""); err != nil {
		tb.Fatal(err)
	}
	man = catalog.Manifest{Schema: 1, Kind: catalog.KindKernel, Name: fzName, Version: fzVersion, KernelVersion: "6.1.0", CreatedAt: "2026-01-02T03:04:05Z"}
	files := map[string]string{catalog.VmlinuxFile: vmlinux, catalog.InitrdFile: initrd, catalog.VmlinuzFile: vmlinuz}
	if _, err := catalog.WriteBundle(&krn, catalog.KindKernel, man, files, filepath.Join(dir, "modules")); err != nil {
		tb.Fatal(err)
	}
	return img.Bytes(), krn.Bytes()
}

// The entry every fuzzed bundle is pulled as.
const (
	fzName    = "fz"
	fzVersion = "1"
)

func fzUnzstd(tb testing.TB, b []byte) []byte {
	tb.Helper()
	zr, err := zstd.NewReader(nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer zr.Close()
	out, err := zr.DecodeAll(b, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// fzHandTar is a tar of hand-made entries, for shapes WriteBundle refuses.
func fzHandTar(tb testing.TB, hdrs ...*tar.Header) []byte {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h0 := range hdrs {
		h := *h0 // the seeds share headers
		body := h.Linkname
		if h.Typeflag == tar.TypeReg {
			h.Linkname = ""
			if h.Size == 0 { // a set Size with no body makes a truncated entry
				h.Size = int64(len(body))
			}
		}
		if err := tw.WriteHeader(&h); err != nil {
			tb.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

// fzSnapshot maps every path under root to its type and, for regular
// files, content.
func fzSnapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		desc := d.Type().String()
		if d.Type().IsRegular() {
			b, _ := os.ReadFile(p)
			desc += ":" + string(b)
		}
		out[filepath.ToSlash(rel)] = desc
		return nil
	})
	return out
}

// FuzzPullBundle: Pull never panics and never writes outside its
// destination root, whatever the bundle holds. The input is a tar that the
// target compresses with zstd (raw false: the tar layer is fuzzed) or the
// .tar.zst as served (raw true: the zstd layer is fuzzed). The index entry
// carries the bundle's real sha256 and size, as a signed index would, plus
// (claim > 0) a signed unpacked_size of claim bytes; the client caps
// unpacking at 1 MiB and 64 entries. A refusal is ErrBadBundle or
// ErrTooLarge in one line and leaves only an empty staging dir. A published
// bundle decompressed to exactly the claimed size (when one is signed), holds
// no more file bytes than that and the client's cap, and is exactly the
// entries its kind allows: regular files 0444, directories only under
// modules/, symlinks only under modules/ and either absolute (meant for the
// guest) or resolving inside modules/; nothing in it is reached through a
// symlink; and its manifest names the entry pulled.
func FuzzPullBundle(f *testing.F) {
	img, krn := fzBundles(f)
	imgTar, krnTar := fzUnzstd(f, img), fzUnzstd(f, krn)
	f.Add(imgTar, false, false, uint32(0))
	f.Add(krnTar, false, true, uint32(0))
	f.Add(imgTar, false, false, uint32(len(imgTar)))
	f.Add(krnTar, false, true, uint32(len(krnTar)))
	f.Add(imgTar, false, false, uint32(len(imgTar)-1))
	f.Add(img, true, false, uint32(0))
	f.Add(krn, true, true, uint32(len(krnTar)))
	manifest := func(kind catalog.Kind) string {
		b, _ := json.Marshal(catalog.Manifest{Schema: 1, Kind: kind, Name: fzName, Version: fzVersion, CreatedAt: "2026-01-02T03:04:05Z"})
		return string(b)
	}
	reg := func(name, body string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeReg, Linkname: body, Mode: 0o644, Format: tar.FormatPAX}
	}
	dirH := func(name string) *tar.Header { return &tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755} }
	link := func(name, target string, typ byte) *tar.Header {
		return &tar.Header{Name: name, Typeflag: typ, Linkname: target, Mode: 0o777}
	}
	km, im := reg(catalog.ManifestFile, manifest(catalog.KindKernel)), reg(catalog.ManifestFile, manifest(catalog.KindImage))
	f.Add(fzHandTar(f, km, reg("vmlinux", "k"), dirH("modules/"), link("modules/up", "../../outside", tar.TypeSymlink), reg("modules/up/escape", "x")), false, true, uint32(0))
	f.Add(fzHandTar(f, km, reg("vmlinux", "k"), dirH("modules/"), link("modules/l", "../vmlinux", tar.TypeSymlink)), false, true, uint32(0))
	f.Add(fzHandTar(f, km, reg("vmlinux", "k"), dirH("modules/"), link("modules/h", "vmlinux", tar.TypeLink)), false, true, uint32(0))
	f.Add(fzHandTar(f, im, reg("rootfs.ext4", "r"), reg("../outside/escape", "x")), false, false, uint32(0))
	f.Add(fzHandTar(f, im, reg("rootfs.ext4", "r"), reg("rootfs.ext4", "again")), false, false, uint32(0))
	f.Add(fzHandTar(f, reg(catalog.ManifestFile, `{"schema":1,"kind":"image","name":"other","version":"1","created_at":"2026-01-02T03:04:05Z"}`), reg("rootfs.ext4", "r")), false, false, uint32(0))
	f.Add(fzHandTar(f, im, &tar.Header{Name: "rootfs.ext4", Typeflag: tar.TypeReg, Size: 1 << 30, Mode: 0o644}), false, false, uint32(0))

	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		f.Fatal(err)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(4<<20))
	if err != nil {
		f.Fatal(err)
	}
	const maxUnpacked, maxEntries = 1 << 20, 64

	f.Fuzz(func(t *testing.T, bundle []byte, raw, kernel bool, claim uint32) {
		stream := int64(-1) // decompressed size, when known
		if !raw {
			stream = int64(len(bundle))
			bundle = enc.EncodeAll(bundle, nil)
		} else if out, err := dec.DecodeAll(bundle, nil); err == nil {
			stream = int64(len(out))
		}
		if len(bundle) == 0 {
			return // a signed index never lists an empty bundle
		}
		kind := catalog.KindImage
		if kernel {
			kind = catalog.KindKernel
		}
		sum := sha256.Sum256(bundle)
		hexSum := hex.EncodeToString(sum[:])
		// Built from JSON, as a client gets it, so the target does not
		// depend on how the signed unpacked size is spelt in Go.
		var e catalog.Entry
		ej, _ := json.Marshal(map[string]any{"name": fzName, "version": fzVersion, "arch": catalog.ArchAMD64,
			"bundle": catalog.BundleFileName(hexSum), "sha256": hexSum, "size": len(bundle), "unpacked_size": claim})
		if err := json.Unmarshal(ej, &e); err != nil {
			t.Fatal(err)
		}
		ix := &catalog.Index{Schema: 1, Kind: kind, GeneratedAt: "2026-01-02T03:04:05Z", Entries: []catalog.Entry{e},
			URL: "http://catalog.invalid/" + catalog.IndexFile}
		c := &catalog.Client{HTTP: &http.Client{Transport: fzTransport{bundle}}, MaxUnpackedBytes: maxUnpacked, MaxEntries: maxEntries,
			StallTimeout: time.Minute}

		root := t.TempDir()
		outside := filepath.Join(root, "outside")
		if err := os.MkdirAll(filepath.Join(outside, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(outside, "keep"), []byte("keep"), 0o644); err != nil {
			t.Fatal(err)
		}
		before := fzSnapshot(t, outside)
		dest := filepath.Join(root, "dest")

		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		got, err := c.Pull(ctx, ix, e, dest, nil)

		if after := fzSnapshot(t, outside); !maps.Equal(before, after) {
			t.Fatalf("Pull changed a directory beside its destination:\nbefore %v\n after %v", before, after)
		}
		top, _ := os.ReadDir(root)
		for _, de := range top {
			if de.Name() != "outside" && de.Name() != "dest" {
				t.Fatalf("Pull created %s beside its destination", de.Name())
			}
		}
		destEnts, _ := os.ReadDir(dest)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("Pull took over 30 s: %v", err)
			}
			if !errors.Is(err, catalog.ErrBadBundle) && !errors.Is(err, trust.ErrTooLarge) {
				t.Fatalf("refusal is neither ErrBadBundle nor ErrTooLarge: %v", err)
			}
			fzOneLine(t, err)
			if len(destEnts) > 1 || len(destEnts) == 1 && destEnts[0].Name() != catalog.StagingDir {
				t.Fatalf("refused (%v) but the destination holds %v", err, destEnts)
			}
			if st, serr := os.ReadDir(filepath.Join(dest, catalog.StagingDir)); len(st) != 0 {
				t.Fatalf("refused (%v) but left staging behind: %v, %v", err, st, serr)
			}
			return
		}
		if want := filepath.Join(dest, catalog.DirName(e)); got != want || len(destEnts) != 2 {
			t.Fatalf("published at %q (destination holds %v), want %q", got, destEnts, want)
		}
		if st, serr := os.ReadDir(filepath.Join(dest, catalog.StagingDir)); serr != nil || len(st) != 0 {
			t.Fatalf("staging dir after a pull: %v, %v", st, serr)
		}
		limit := int64(maxUnpacked)
		if claim > 0 {
			if stream >= 0 && stream != int64(claim) {
				t.Fatalf("published a bundle that unpacks to %d bytes, the signed index says %d", stream, claim)
			}
			limit = min(limit, int64(claim))
		}
		if stream > maxUnpacked {
			t.Fatalf("published a bundle that unpacks to %d bytes, over the %d-byte cap", stream, maxUnpacked)
		}
		fzCheckPublished(t, got, kind, limit, maxEntries)
	})
}

// fzCheckPublished checks a published bundle directory against the entry
// rules for kind.
func fzCheckPublished(t *testing.T, dir string, kind catalog.Kind, maxUnpacked int64, maxEntries int) {
	t.Helper()
	var total int64
	n := 0
	have := map[string]bool{}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		n++
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		have[rel] = true
		// The parent is a real directory of the bundle: nothing below is
		// reached through a symlink.
		if real, err := filepath.EvalSymlinks(filepath.Dir(p)); err != nil || real != filepath.Join(realDir, filepath.Dir(rel)) {
			t.Fatalf("%s: parent resolves to %q (%v)", rel, real, err)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		top, _, nested := strings.Cut(rel, "/")
		if nested && (kind != catalog.KindKernel || top != catalog.ModulesDir) {
			t.Fatalf("%s: only a kernel's modules/ tree has subdirectories", rel)
		}
		switch {
		case fi.Mode().IsRegular():
			if fi.Mode().Perm() != 0o444 {
				t.Fatalf("%s: mode %v, want 0444", rel, fi.Mode())
			}
			total += fi.Size()
		case fi.IsDir():
			if rel != catalog.ModulesDir && !strings.HasPrefix(rel, catalog.ModulesDir+"/") || kind != catalog.KindKernel {
				t.Fatalf("%s: a directory outside a kernel's modules/", rel)
			}
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if !strings.HasPrefix(rel, catalog.ModulesDir+"/") || kind != catalog.KindKernel {
				t.Fatalf("%s -> %s: a symlink outside a kernel's modules/", rel, target)
			}
			if !strings.HasPrefix(target, "/") {
				r := path.Join(path.Dir(rel), target)
				if r != catalog.ModulesDir && !strings.HasPrefix(r, catalog.ModulesDir+"/") {
					t.Fatalf("%s -> %s escapes modules/", rel, target)
				}
			}
		default:
			t.Fatalf("%s: unexpected file type %v", rel, fi.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if total > maxUnpacked || n > maxEntries {
		t.Fatalf("published %d bytes in %d entries, over the caps %d / %d", total, n, maxUnpacked, maxEntries)
	}
	allowed := map[string]bool{catalog.ManifestFile: true}
	required := []string{catalog.ManifestFile}
	if kind == catalog.KindImage {
		allowed[catalog.RootfsFile] = true
		required = append(required, catalog.RootfsFile)
	} else {
		for _, n := range []string{catalog.VmlinuxFile, catalog.InitrdFile, catalog.VmlinuzFile, catalog.ModulesDir} {
			allowed[n] = true
		}
		required = append(required, catalog.VmlinuxFile)
	}
	for rel := range have {
		if top, _, _ := strings.Cut(rel, "/"); !allowed[top] {
			t.Fatalf("%s does not belong in %s bundle", rel, kind)
		}
	}
	for _, r := range required {
		if !have[r] {
			t.Fatalf("published %s bundle without %s", kind, r)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, catalog.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var m catalog.Manifest
	if err := json.Unmarshal(b, &m); err != nil || m.Kind != kind || m.Name != fzName || m.Version != fzVersion || m.Schema != catalog.SchemaVersion {
		t.Fatalf("published manifest %+v (%v) does not name %s %s %s", m, err, kind, fzName, fzVersion)
	}
}
