package catalog_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"github.com/banger-dev/banger/internal/testutil"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/catalog"
	"github.com/banger-dev/banger/internal/release"
	"github.com/banger-dev/banger/internal/trust"
)

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// publish runs the publisher for one bundle from a fresh --from directory
// made by fill.
func publish(t *testing.T, out string, k testutil.OpenSSLKey, kind catalog.Kind, name string, fill func(from string)) *release.CatalogResult {
	t.Helper()
	from := t.TempDir()
	fill(from)
	res, err := release.PublishCatalog(context.Background(), release.CatalogOptions{
		Kind: kind, Name: name, OutDir: out, KeyPath: k.Priv, FromDir: from,
		Version: "1.0", Description: "test " + string(kind), VerifyPub: k.Pub,
	})
	if err != nil {
		t.Fatalf("publish %s %s: %v", kind, name, err)
	}
	return res
}

// TestPublishAndPull: what banger-release catalog writes, the client
// fetches, verifies and unpacks byte for byte, 0444, under <name>-<sha12>.
func TestPublishAndPull(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	// A rootfs with holes and data, so the sparse writer is exercised.
	rootfs := append(append(randomBytes(t, 10_000), make([]byte, 3<<20)...), randomBytes(t, 5000)...)
	vmlinux := append([]byte("ELF... Linux version 6.1.99-test (builder@host) #1 SMP ..."), randomBytes(t, 100_000)...)
	initrd := randomBytes(t, 4096)
	modFile := randomBytes(t, 777)

	imgDir, kerDir := t.TempDir(), t.TempDir()
	img := publish(t, imgDir, k, catalog.KindImage, "debian-12", func(from string) {
		writeFile(t, filepath.Join(from, "rootfs.ext4"), rootfs)
		writeFile(t, filepath.Join(from, "ignored.txt"), []byte("not part of the bundle"))
	})
	ker := publish(t, kerDir, k, catalog.KindKernel, "linux-6.1", func(from string) {
		writeFile(t, filepath.Join(from, "vmlinux"), vmlinux)
		writeFile(t, filepath.Join(from, "initrd.img"), initrd)
		writeFile(t, filepath.Join(from, "modules/6.1.99-test/kernel/a.ko"), modFile)
		writeFile(t, filepath.Join(from, "modules/6.1.99-test/modules.dep"), []byte("a.ko:\n"))
		for l, target := range map[string]string{
			"modules/6.1.99-test/dep":   "modules.dep",
			"modules/6.1.99-test/build": "/usr/src/linux-headers-6.1.99-test",
			"modules/latest":            "6.1.99-test",
		} {
			if err := os.Symlink(target, filepath.Join(from, l)); err != nil {
				t.Fatal(err)
			}
		}
	})
	if ker.Entry.KernelVersion != "6.1.99-test" {
		t.Errorf("kernel_version %q, want it read from the vmlinux banner", ker.Entry.KernelVersion)
	}

	ctx := context.Background()
	for _, tc := range []struct {
		kind  catalog.Kind
		dir   string
		res   *release.CatalogResult
		files map[string][]byte
		links map[string]string
		dirs  []string
	}{
		{catalog.KindImage, imgDir, img, map[string][]byte{"rootfs.ext4": rootfs}, nil, nil},
		{catalog.KindKernel, kerDir, ker,
			map[string][]byte{"vmlinux": vmlinux, "initrd.img": initrd, "modules/6.1.99-test/kernel/a.ko": modFile},
			map[string]string{"modules/6.1.99-test/dep": "modules.dep", "modules/6.1.99-test/build": "/usr/src/linux-headers-6.1.99-test", "modules/latest": "6.1.99-test"},
			[]string{"modules", "modules/6.1.99-test", "modules/6.1.99-test/kernel"}},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			srv := newServer(t, tc.dir)
			c := srv.client(k)
			ix, err := c.FetchIndex(ctx, srv.indexURL(), tc.kind)
			if err != nil {
				t.Fatal(err)
			}
			e, ok := ix.Find(tc.res.Entry.Name)
			if !ok || e != tc.res.Entry {
				t.Fatalf("index entry %+v, publisher said %+v", e, tc.res.Entry)
			}
			if _, ok := ix.Find("nope"); ok {
				t.Fatal("Find found a name that is not there")
			}
			dest := t.TempDir()
			var last, total int64
			got, err := c.Pull(ctx, ix, e, dest, func(done, tot int64) { last, total = done, tot })
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(dest, e.Name+"-"+e.SHA256[:12]); got != want {
				t.Fatalf("pulled into %s, want %s", got, want)
			}
			if last != e.Size || total != e.Size {
				t.Errorf("last progress %d/%d, want %d/%d", last, total, e.Size, e.Size)
			}
			for name, want := range tc.files {
				p := filepath.Join(got, name)
				b, err := os.ReadFile(p)
				if err != nil || !bytes.Equal(b, want) {
					t.Errorf("%s: %d bytes (err %v), want the %d input bytes", name, len(b), err, len(want))
				}
				if fi, err := os.Lstat(p); err != nil || fi.Mode() != 0o444 {
					t.Errorf("%s: mode %v (err %v), want 0444", name, fi.Mode(), err)
				}
			}
			for name, want := range tc.links {
				if l, err := os.Readlink(filepath.Join(got, name)); err != nil || l != want {
					t.Errorf("symlink %s -> %q (%v), want %q", name, l, err, want)
				}
			}
			for _, d := range tc.dirs {
				if fi, err := os.Lstat(filepath.Join(got, d)); err != nil || fi.Mode() != fs.ModeDir|0o755 {
					t.Errorf("dir %s: %v %v", d, fi.Mode(), err)
				}
			}
			man, err := os.ReadFile(filepath.Join(got, "manifest.json"))
			if err != nil || !strings.Contains(string(man), `"name": "`+e.Name+`"`) {
				t.Errorf("manifest.json: %s (%v)", man, err)
			}
			// Exactly the published dir and an empty .staging.
			ents, _ := os.ReadDir(dest)
			if len(ents) != 2 {
				t.Errorf("dest holds %v", ents)
			}
			assertClean(t, filepath.Join(dest, "x")) // a dir that is not there
			st, _ := os.ReadDir(filepath.Join(dest, catalog.StagingDir))
			if len(st) != 0 {
				t.Errorf(".staging holds %v", st)
			}
		})
	}
}

// TestTamperedBundle: a bundle altered on the server is refused and leaves
// nothing behind.
func TestTamperedBundle(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	out := t.TempDir()
	res := publish(t, out, k, catalog.KindImage, "img", func(from string) {
		writeFile(t, filepath.Join(from, "rootfs.ext4"), randomBytes(t, 200_000))
	})
	orig, err := os.ReadFile(res.BundlePath)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		mutate func([]byte) []byte
	}{
		{"flip a byte in the middle", func(b []byte) []byte { b[len(b)/2] ^= 0x40; return b }},
		{"flip the last byte", func(b []byte) []byte { b[len(b)-1] ^= 0x01; return b }},
		{"truncated", func(b []byte) []byte { return b[:len(b)-100] }},
		{"a byte appended", func(b []byte) []byte { return append(b, 0) }},
		{"other bytes", func(b []byte) []byte { return randomBytes(t, len(b)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(res.BundlePath, tc.mutate(bytes.Clone(orig)), 0o644); err != nil {
				t.Fatal(err)
			}
			srv := newServer(t, out)
			c := srv.client(k)
			ix, err := c.FetchIndex(context.Background(), srv.indexURL(), catalog.KindImage)
			if err != nil {
				t.Fatal(err)
			}
			dest := t.TempDir()
			_, err = c.Pull(context.Background(), ix, ix.Entries[0], dest, nil)
			if !errors.Is(err, catalog.ErrHashMismatch) && !errors.Is(err, catalog.ErrBadBundle) {
				t.Fatalf("err = %v, want a hash mismatch or a bad bundle", err)
			}
			t.Logf("refused: %v", err)
			if strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "refusing") {
				t.Errorf("error is not one line ending in a refusal: %q", err)
			}
			assertClean(t, dest)
		})
	}
}

// TestTamperedIndex: an index edited after signing is refused before any
// bundle is requested.
func TestTamperedIndex(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	out := t.TempDir()
	publish(t, out, k, catalog.KindImage, "img", func(from string) {
		writeFile(t, filepath.Join(from, "rootfs.ext4"), randomBytes(t, 1000))
	})
	indexPath := filepath.Join(out, catalog.IndexFile)
	orig, _ := os.ReadFile(indexPath)
	var sum string
	if ix, err := catalog.ParseIndex(orig); err == nil {
		sum = ix.Entries[0].SHA256
	} else {
		t.Fatal(err)
	}
	other := strings.Repeat("0", 64)
	for _, tc := range []struct{ name, old, new string }{
		{"description", `"test image"`, `"evil image"`},
		{"sha256", `"sha256": "` + sum + `"`, `"sha256": "` + other + `"`},
		{"bundle", `"bundle": "` + sum, `"bundle": "https://evil.example/` + sum},
		{"whitespace", "\n", "\r\n"},
		{"trailing newline", "}\n", "}\n\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			edited := strings.Replace(string(orig), tc.old, tc.new, 1)
			if edited == string(orig) {
				t.Fatalf("edit %q did not apply", tc.old)
			}
			if err := os.WriteFile(indexPath, []byte(edited), 0o644); err != nil {
				t.Fatal(err)
			}
			srv := newServer(t, out)
			_, err := srv.client(k).FetchIndex(context.Background(), srv.indexURL(), catalog.KindImage)
			if !errors.Is(err, catalog.ErrSignature) || !strings.Contains(err.Error(), "does not verify with the release key") {
				t.Fatalf("err = %v", err)
			}
			if n := srv.bundleRequests(); n != 0 {
				t.Fatalf("%d bundle requests after a refused index", n)
			}
		})
	}
}

// TestIndexSignatureRefusals: another key, no signature, a broken one, the
// placeholder key; and signed indexes that break the rules.
func TestIndexSignatureRefusals(t *testing.T) {
	k, other := testutil.NewOpenSSLKey(t, "prime256v1"), testutil.NewOpenSSLKey(t, "prime256v1")
	out := t.TempDir()
	e := putBundle(t, out, "img", "1", []byte("not really a bundle"))
	good := signIndex(t, out, k, catalog.KindImage, e)
	sigPath := filepath.Join(out, catalog.IndexFile+catalog.SignatureSuffix)
	goodSig, _ := os.ReadFile(sigPath)
	placeholder := []byte(trust.PlaceholderMarker + "\n")

	for _, tc := range []struct {
		name   string
		sig    []byte // nil: no .sig file
		pubPEM []byte
		want   string
	}{
		{"signed by another key", other.Sign(t, good), k.PubPEM, "does not verify with the release key"},
		{"verified with another key", goodSig, other.PubPEM, "does not verify with the release key"},
		{"no signature", nil, k.PubPEM, "404"},
		{"empty signature", []byte{}, k.PubPEM, "is empty"},
		{"not base64", []byte("!!!"), k.PubPEM, "not base64"},
		{"placeholder release key", goodSig, placeholder, "not configured"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(sigPath)
			if tc.sig != nil {
				if err := os.WriteFile(sigPath, tc.sig, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			srv := newServer(t, out)
			c := &catalog.Client{HTTP: srv.Client(), PublicKeyPEM: tc.pubPEM}
			_, err := c.FetchIndex(context.Background(), srv.indexURL(), catalog.KindImage)
			if !errors.Is(err, catalog.ErrSignature) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrSignature mentioning %q", err, tc.want)
			}
			t.Logf("refused: %v", err)
			if strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), srv.indexURL()) {
				t.Errorf("error is not one line naming the index URL: %q", err)
			}
			if srv.bundleRequests() != 0 {
				t.Fatal("bundle requested")
			}
		})
	}

	// Correctly signed, but breaking the rules.
	bad := func(mut func(*catalog.Entry)) catalog.Entry { c := e; mut(&c); return c }
	for _, tc := range []struct {
		name    string
		kind    catalog.Kind // the catalog's kind
		want    catalog.Kind // the kind asked for
		entries []catalog.Entry
		msg     string
	}{
		{"wrong kind", catalog.KindKernel, catalog.KindImage, nil, "is a kernel catalog, not an image catalog"},
		{"unsafe name", catalog.KindImage, catalog.KindImage, []catalog.Entry{bad(func(e *catalog.Entry) { e.Name = "../x" })}, "not a safe entry name"},
		{"upper-case name", catalog.KindImage, catalog.KindImage, []catalog.Entry{bad(func(e *catalog.Entry) { e.Name = "Debian" })}, "not a safe entry name"},
		{"bundle not content addressed", catalog.KindImage, catalog.KindImage, []catalog.Entry{bad(func(e *catalog.Entry) { e.Bundle = "img.tar.zst" })}, "not named after its sha256"},
		{"bundle of another sha", catalog.KindImage, catalog.KindImage, []catalog.Entry{bad(func(e *catalog.Entry) { e.SHA256 = strings.Repeat("a", 64) })}, "not named after its sha256"},
		{"file bundle URL", catalog.KindImage, catalog.KindImage, []catalog.Entry{bad(func(e *catalog.Entry) { e.Bundle = "file:///" + e.Bundle })}, "not http(s)"},
		{"bad sha", catalog.KindImage, catalog.KindImage, []catalog.Entry{bad(func(e *catalog.Entry) { e.SHA256 = "ABC" })}, "64 lower-case hex"},
		{"zero size", catalog.KindImage, catalog.KindImage, []catalog.Entry{bad(func(e *catalog.Entry) { e.Size = 0 })}, "size 0"},
		{"arch", catalog.KindImage, catalog.KindImage, []catalog.Entry{bad(func(e *catalog.Entry) { e.Arch = "arm64" })}, "arch"},
		{"image with kernel_version", catalog.KindImage, catalog.KindImage, []catalog.Entry{bad(func(e *catalog.Entry) { e.KernelVersion = "6.1" })}, "no kernel_version"},
		{"duplicate", catalog.KindImage, catalog.KindImage, []catalog.Entry{e, e}, "twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			signIndex(t, out, k, tc.kind, tc.entries...)
			srv := newServer(t, out)
			_, err := srv.client(k).FetchIndex(context.Background(), srv.indexURL(), tc.want)
			if !errors.Is(err, catalog.ErrBadIndex) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want ErrBadIndex mentioning %q", err, tc.msg)
			}
		})
	}
}

// TestUnsafeBundles: bundles breaking the entry-set rules are refused even
// when the index signs them, and leave nothing behind.
func TestUnsafeBundles(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	imgMan := reg("manifest.json", manifestJSON(catalog.KindImage, "b", "1"))
	kerMan := reg("manifest.json", manifestJSON(catalog.KindKernel, "b", "1"))
	rootfs := reg("rootfs.ext4", "ext4")
	vmlinux := reg("vmlinux", "kernel")
	for _, tc := range []struct {
		name string
		kind catalog.Kind
		ents []tarEnt
		msg  string // "" means: must succeed
	}{
		{"valid image (control)", catalog.KindImage, []tarEnt{imgMan, rootfs}, ""},
		{"valid kernel (control)", catalog.KindKernel, []tarEnt{vmlinux, reg("vmlinuz", "z"), dir("modules/"), dir("modules/6.1/"),
			symlink("modules/6.1/build", "/usr/src/x"), symlink("modules/6.1/up", "../6.1"), reg("modules/6.1/m.ko", "m"), kerMan}, ""},
		{"extra entry", catalog.KindImage, []tarEnt{imgMan, rootfs, reg("extra.txt", "x")}, `"extra.txt" does not belong`},
		{"dot-dot entry", catalog.KindImage, []tarEnt{imgMan, rootfs, reg("../x", "x")}, "../x"},
		{"dot-dot inside modules", catalog.KindKernel, []tarEnt{kerMan, vmlinux, dir("modules/"), reg("modules/../../x", "x")}, "modules/../../x"},
		{"absolute entry", catalog.KindImage, []tarEnt{imgMan, reg("/rootfs.ext4", "x")}, "/rootfs.ext4"},
		{"dot-slash entry", catalog.KindImage, []tarEnt{imgMan, reg("./rootfs.ext4", "x")}, "not a clean relative path"},
		{"backslash", catalog.KindKernel, []tarEnt{kerMan, vmlinux, dir("modules/"), reg(`modules\x`, "x")}, "backslash"},
		{"duplicate", catalog.KindImage, []tarEnt{imgMan, rootfs, reg("rootfs.ext4", "again")}, "twice"},
		{"duplicate manifest", catalog.KindImage, []tarEnt{imgMan, rootfs, imgMan}, "twice"},
		{"symlink escaping modules", catalog.KindKernel, []tarEnt{kerMan, vmlinux, dir("modules/"), symlink("modules/x", "../../etc/passwd")}, "escapes modules/"},
		{"symlink to the bundle root", catalog.KindKernel, []tarEnt{kerMan, vmlinux, dir("modules/"), symlink("modules/x", "../vmlinux")}, "escapes modules/"},
		{"write through a symlink", catalog.KindKernel, []tarEnt{kerMan, vmlinux, dir("modules/"), symlink("modules/l", "/etc"), reg("modules/l/passwd", "x")}, "without) its directory"},
		{"file before its dir", catalog.KindKernel, []tarEnt{kerMan, vmlinux, reg("modules/a.ko", "x")}, "without) its directory"},
		{"hardlink", catalog.KindKernel, []tarEnt{kerMan, vmlinux, dir("modules/"), {name: "modules/h", typ: tar.TypeLink, linkname: "vmlinux"}}, "tar type"},
		{"char device", catalog.KindKernel, []tarEnt{kerMan, vmlinux, dir("modules/"), {name: "modules/null", typ: tar.TypeChar}}, "tar type"},
		{"fifo", catalog.KindImage, []tarEnt{imgMan, rootfs, {name: "fifo", typ: tar.TypeFifo}}, "tar type"},
		{"symlink at top level", catalog.KindImage, []tarEnt{imgMan, symlink("rootfs.ext4", "/dev/sda")}, "is a symlink"},
		{"modules in an image", catalog.KindImage, []tarEnt{imgMan, rootfs, dir("modules/")}, "does not belong in an image bundle"},
		{"rootfs in a kernel", catalog.KindKernel, []tarEnt{kerMan, vmlinux, rootfs}, "does not belong in a kernel bundle"},
		{"vmlinux as a dir", catalog.KindKernel, []tarEnt{kerMan, dir("vmlinux/")}, "is a directory"},
		{"missing rootfs", catalog.KindImage, []tarEnt{imgMan}, "bundle without rootfs.ext4"},
		{"missing manifest", catalog.KindImage, []tarEnt{rootfs}, "bundle without manifest.json"},
		{"manifest of another name", catalog.KindImage, []tarEnt{reg("manifest.json", manifestJSON(catalog.KindImage, "other", "1")), rootfs}, `name "other"`},
		{"manifest of another version", catalog.KindImage, []tarEnt{reg("manifest.json", manifestJSON(catalog.KindImage, "b", "2")), rootfs}, `version "2"`},
		{"manifest of another kind", catalog.KindImage, []tarEnt{reg("manifest.json", manifestJSON(catalog.KindKernel, "b", "1")), rootfs}, "manifest kind"},
		{"manifest not JSON", catalog.KindImage, []tarEnt{reg("manifest.json", "{"), rootfs}, "not valid JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := t.TempDir()
			e := handBundle(t, out, "b", "1", tc.ents)
			signIndex(t, out, k, tc.kind, e)
			srv := newServer(t, out)
			c := srv.client(k)
			ix, err := c.FetchIndex(context.Background(), srv.indexURL(), tc.kind)
			if err != nil {
				t.Fatal(err)
			}
			dest := t.TempDir()
			got, err := c.Pull(context.Background(), ix, e, dest, nil)
			if tc.msg == "" {
				if err != nil {
					t.Fatalf("valid bundle refused: %v", err)
				}
				if _, err := os.Stat(filepath.Join(got, "manifest.json")); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, catalog.ErrBadBundle) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want ErrBadBundle mentioning %q", err, tc.msg)
			}
			t.Logf("refused: %v", err)
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("multi-line error %q", err)
			}
			assertClean(t, dest)
		})
	}
}

// TestConcurrentPullsShareOneDownload: two Pulls of one bundle make one
// request and return the same directory; a later Pull makes none.
func TestConcurrentPullsShareOneDownload(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	out := t.TempDir()
	res := publish(t, out, k, catalog.KindImage, "img", func(from string) {
		writeFile(t, filepath.Join(from, "rootfs.ext4"), randomBytes(t, 300_000))
	})
	srv := newServer(t, out)
	bundlePath := "/" + filepath.Base(res.BundlePath)
	files := http.FileServer(http.Dir(out))
	srv.hook(bundlePath, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond) // let the second Pull join
		files.ServeHTTP(w, r)
	})
	c := srv.client(k)
	ctx := context.Background()
	ix, err := c.FetchIndex(ctx, srv.indexURL(), catalog.KindImage)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := ix.Find("img")
	dest := t.TempDir()
	var wg sync.WaitGroup
	dirs, errs := make([]string, 2), make([]error, 2)
	for i := range 2 {
		wg.Go(func() { dirs[i], errs[i] = c.Pull(ctx, ix, e, dest, nil) })
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("pulls: %v, %v", errs[0], errs[1])
	}
	if dirs[0] != dirs[1] || dirs[0] != filepath.Join(dest, catalog.DirName(e)) {
		t.Fatalf("pulls returned %q and %q", dirs[0], dirs[1])
	}
	if n := srv.count(bundlePath); n != 1 {
		t.Fatalf("bundle requested %d times, want 1", n)
	}
	// Already published: no request, from this client or a new one.
	for _, cl := range []*catalog.Client{c, srv.client(k)} {
		got, err := cl.Pull(ctx, ix, e, dest, nil)
		if err != nil || got != dirs[0] {
			t.Fatalf("pull of a published bundle: %q %v", got, err)
		}
	}
	if n := srv.count(bundlePath); n != 1 {
		t.Fatalf("bundle requested %d times after it was published, want 1", n)
	}
	// A dir in the way that is not a bundle is not taken for one.
	dest2 := t.TempDir()
	if err := os.Mkdir(filepath.Join(dest2, catalog.DirName(e)), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pull(ctx, ix, e, dest2, nil); err == nil || !strings.Contains(err.Error(), "not a pulled bundle") {
		t.Fatalf("dir in the way: err = %v", err)
	}
	// An entry that is not the index's own is refused.
	forged := e
	forged.Description = "forged"
	if _, err := c.Pull(ctx, ix, forged, t.TempDir(), nil); !errors.Is(err, catalog.ErrNotFound) {
		t.Fatalf("forged entry: err = %v", err)
	}
}

// TestPullCancelAndStall: a download cancelled (or stalled) midway fails
// and removes its staging directory.
func TestPullCancelAndStall(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	out := t.TempDir()
	res := publish(t, out, k, catalog.KindImage, "img", func(from string) {
		writeFile(t, filepath.Join(from, "rootfs.ext4"), randomBytes(t, 1<<20))
	})
	data, _ := os.ReadFile(res.BundlePath)
	for _, tc := range []struct {
		name   string
		cancel bool
		want   string
	}{
		{"cancelled", true, "context canceled"},
		{"stalled", false, "no data for"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t, out)
			started := make(chan struct{})
			srv.hook("/"+filepath.Base(res.BundlePath), func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(len(data)))
				w.Write(data[:len(data)/2])
				w.(http.Flusher).Flush()
				close(started)
				<-r.Context().Done() // stall until the client gives up
			})
			c := srv.client(k)
			c.StallTimeout = 300 * time.Millisecond
			if tc.cancel {
				c.StallTimeout = time.Minute
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ix, err := c.FetchIndex(ctx, srv.indexURL(), catalog.KindImage)
			if err != nil {
				t.Fatal(err)
			}
			dest := t.TempDir()
			if tc.cancel {
				go func() {
					<-started
					time.Sleep(100 * time.Millisecond)
					cancel()
				}()
			}
			_, err = c.Pull(ctx, ix, ix.Entries[0], dest, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
			if tc.cancel && !errors.Is(err, context.Canceled) {
				t.Errorf("err %v is not context.Canceled", err)
			}
			assertClean(t, dest)
		})
	}
}

// TestBundleServedWrong: a missing bundle, and one streamed (without a
// Content-Length) longer than the index says, are refused cleanly.
func TestBundleServedWrong(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	out := t.TempDir()
	res := publish(t, out, k, catalog.KindImage, "img", func(from string) {
		writeFile(t, filepath.Join(from, "rootfs.ext4"), randomBytes(t, 100_000))
	})
	data, _ := os.ReadFile(res.BundlePath)
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		class   error
		want    string
	}{
		{"404", http.NotFound, catalog.ErrFetch, "HTTP 404 Not Found"},
		{"streamed too long", func(w http.ResponseWriter, r *http.Request) {
			w.Write(data[:100])
			w.(http.Flusher).Flush() // no Content-Length from here on
			w.Write(data[100:])
			w.Write([]byte("trailing bytes"))
		}, catalog.ErrHashMismatch, "more than the"},
		{"streamed short", func(w http.ResponseWriter, r *http.Request) {
			w.Write(data[:100])
			w.(http.Flusher).Flush()
			w.Write(data[100 : len(data)-10])
		}, catalog.ErrHashMismatch, "bytes, the signed index says"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t, out)
			srv.hook("/"+filepath.Base(res.BundlePath), tc.handler)
			c := srv.client(k)
			ix, err := c.FetchIndex(context.Background(), srv.indexURL(), catalog.KindImage)
			if err != nil {
				t.Fatal(err)
			}
			dest := t.TempDir()
			_, err = c.Pull(context.Background(), ix, ix.Entries[0], dest, nil)
			t.Logf("refused: %v", err)
			if !errors.Is(err, tc.class) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %v mentioning %q", err, tc.class, tc.want)
			}
			assertClean(t, dest)
		})
	}
}

// TestJoinedPullSurvivesLeaderCancel: when the Pull that started a shared
// download is cancelled, a Pull that joined it starts again and succeeds.
func TestJoinedPullSurvivesLeaderCancel(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	out := t.TempDir()
	res := publish(t, out, k, catalog.KindImage, "img", func(from string) {
		writeFile(t, filepath.Join(from, "rootfs.ext4"), randomBytes(t, 100_000))
	})
	srv := newServer(t, out)
	bundlePath := "/" + filepath.Base(res.BundlePath)
	files := http.FileServer(http.Dir(out))
	started := make(chan struct{})
	var once sync.Once
	srv.hook(bundlePath, func(w http.ResponseWriter, r *http.Request) {
		first := false
		once.Do(func() { first = true })
		if first {
			close(started)
			<-r.Context().Done()
			return
		}
		files.ServeHTTP(w, r)
	})
	c := srv.client(k)
	ix, err := c.FetchIndex(context.Background(), srv.indexURL(), catalog.KindImage)
	if err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	ctxA, cancelA := context.WithCancel(context.Background())
	defer cancelA()
	errA := make(chan error, 1)
	go func() { _, err := c.Pull(ctxA, ix, ix.Entries[0], dest, nil); errA <- err }()
	<-started
	type result struct {
		dir string
		err error
	}
	resB := make(chan result, 1)
	go func() { d, err := c.Pull(context.Background(), ix, ix.Entries[0], dest, nil); resB <- result{d, err} }()
	time.Sleep(100 * time.Millisecond) // let B join A's download
	cancelA()
	if err := <-errA; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled pull: err = %v", err)
	}
	b := <-resB
	if b.err != nil || b.dir != filepath.Join(dest, catalog.DirName(ix.Entries[0])) {
		t.Fatalf("joined pull: %q %v", b.dir, b.err)
	}
	if n := srv.count(bundlePath); n != 2 {
		t.Fatalf("bundle requested %d times, want 2", n)
	}
	if st, _ := os.ReadDir(filepath.Join(dest, catalog.StagingDir)); len(st) != 0 {
		t.Fatalf(".staging holds %v", st)
	}
}
