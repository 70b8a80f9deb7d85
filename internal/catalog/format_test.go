package catalog_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/banger-dev/banger/internal/catalog"
)

func TestSafeEntryName(t *testing.T) {
	for name, want := range map[string]bool{
		"debian-12": true, "linux-6.1.0_x": true, "a": true, "0": true,
		strings.Repeat("a", 63): true, strings.Repeat("a", 64): false,
		"": false, ".x": false, "-x": false, "Debian": false, "a/b": false,
		"..": false, "a b": false, "ä": false, "a\x00": false,
	} {
		if got := catalog.SafeEntryName(name); got != want {
			t.Errorf("SafeEntryName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestResolveBundleURL(t *testing.T) {
	sum := strings.Repeat("ab", 32) + ".tar.zst"
	for _, tc := range []struct{ index, bundle, want string }{
		{"https://cat.example/images/index.json", sum, "https://cat.example/images/" + sum},
		{"https://cat.example/images/index.json", "blobs/" + sum, "https://cat.example/images/blobs/" + sum},
		{"https://cat.example/images/index.json", "../blobs/" + sum, "https://cat.example/blobs/" + sum},
		{"https://cat.example/images/index.json", "/b/" + sum, "https://cat.example/b/" + sum},
		{"https://cat.example/images/index.json", "http://mirror.example/" + sum, "http://mirror.example/" + sum},
		{"https://cat.example/images/index.json", "//mirror.example/" + sum, "https://mirror.example/" + sum},
		{"https://cat.example/index.json", "ftp://x/" + sum, ""},
		{"https://cat.example/index.json", "https://user:pw@x/" + sum, ""},
		{"https://cat.example/index.json", sum + "?a=b", ""},
		{"https://cat.example/index.json", "", ""},
		{"cat.example/index.json", sum, ""},
		{"file:///srv/index.json", sum, ""},
	} {
		got, err := catalog.ResolveBundleURL(tc.index, tc.bundle)
		if tc.want == "" {
			if err == nil {
				t.Errorf("ResolveBundleURL(%q, %q) = %q, want an error", tc.index, tc.bundle, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ResolveBundleURL(%q, %q) = %q, %v; want %q", tc.index, tc.bundle, got, err, tc.want)
		}
	}
}

// TestWriteBundle: the same inputs give the same bytes; inputs the client
// would refuse are refused up front.
func TestWriteBundle(t *testing.T) {
	from := t.TempDir()
	writeFile(t, filepath.Join(from, "vmlinux"), []byte("kernel"))
	writeFile(t, filepath.Join(from, "modules/6.1/a.ko"), []byte("module"))
	if err := os.Symlink("a.ko", filepath.Join(from, "modules/6.1/b.ko")); err != nil {
		t.Fatal(err)
	}
	man := catalog.Manifest{Schema: 1, Kind: catalog.KindKernel, Name: "k", Version: "1", CreatedAt: "2026-01-02T03:04:05Z"}
	files := map[string]string{"vmlinux": filepath.Join(from, "vmlinux")}
	var a, b bytes.Buffer
	na, err := catalog.WriteBundle(&a, catalog.KindKernel, man, files, filepath.Join(from, "modules"))
	if err != nil {
		t.Fatal(err)
	}
	nb, err := catalog.WriteBundle(&b, catalog.KindKernel, man, files, filepath.Join(from, "modules"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) || na != nb {
		t.Fatal("WriteBundle is not deterministic")
	}
	// The unpacked size it returns is the tar stream's: what zstd gives back.
	zr, err := zstd.NewReader(bytes.NewReader(a.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	zr.Close()
	if err != nil || int64(len(raw)) != na || na%512 != 0 {
		t.Fatalf("unpacked size %d, the stream decompresses to %d bytes (%v)", na, len(raw), err)
	}

	imgMan := man
	imgMan.Kind = catalog.KindImage
	escaping := t.TempDir()
	if err := os.Symlink("../../etc", filepath.Join(escaping, "x")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		kind    catalog.Kind
		man     catalog.Manifest
		files   map[string]string
		modules string
		want    string
	}{
		{"kind mismatch", catalog.KindImage, man, map[string]string{"rootfs.ext4": files["vmlinux"]}, "", "manifest kind"},
		{"unknown file", catalog.KindKernel, man, map[string]string{"vmlinux": files["vmlinux"], "config": files["vmlinux"]}, "", `"config" does not belong`},
		{"missing vmlinux", catalog.KindKernel, man, map[string]string{}, "", "needs vmlinux"},
		{"manifest as a file", catalog.KindKernel, man, map[string]string{"vmlinux": files["vmlinux"], "manifest.json": files["vmlinux"]}, "", "generated"},
		{"modules in an image", catalog.KindImage, imgMan, map[string]string{"rootfs.ext4": files["vmlinux"]}, from, "only a kernel"},
		{"escaping symlink", catalog.KindKernel, man, files, escaping, "escapes modules/"},
		{"not a regular file", catalog.KindKernel, man, map[string]string{"vmlinux": from}, "", "not a regular file"},
		{"bad name", catalog.KindKernel, func() catalog.Manifest { m := man; m.Name = "K"; return m }(), files, "", "not a safe entry name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := catalog.WriteBundle(&bytes.Buffer{}, tc.kind, tc.man, tc.files, tc.modules)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}
