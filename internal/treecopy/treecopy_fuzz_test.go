package treecopy

import (
	"archive/tar"
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzUnpack: any byte stream (a hostile guest's 'vm cp' output) is
// extracted or refused without a panic, and nothing is ever created or
// changed outside the destination's directory.
func FuzzUnpack(f *testing.F) {
	seed := func(entries ...tar.Header) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, h := range entries {
			h := h
			body := []byte(nil)
			if h.Typeflag == tar.TypeReg {
				body = bytes.Repeat([]byte("x"), int(h.Size))
			}
			tw.WriteHeader(&h)
			tw.Write(body)
		}
		tw.Close()
		return buf.Bytes()
	}
	f.Add(seed(tar.Header{Name: "top/", Typeflag: tar.TypeDir, Mode: 0o755}, tar.Header{Name: "top/f", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3}))
	f.Add(seed(tar.Header{Name: "top/", Typeflag: tar.TypeDir, Mode: 0o755}, tar.Header{Name: "top/l", Typeflag: tar.TypeSymlink, Linkname: "../.."},
		tar.Header{Name: "top/l/escape", Typeflag: tar.TypeReg, Size: 1}))
	f.Add(seed(tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o6755, Size: 2}))
	f.Add([]byte("not a tar stream"))
	f.Fuzz(func(t *testing.T, stream []byte) {
		outer := t.TempDir()
		dst := filepath.Join(outer, "box", "dst")
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		sentinel := filepath.Join(outer, "sentinel")
		os.WriteFile(sentinel, []byte("x"), 0o600)
		Unpack(bytes.NewReader(stream), dst, Options{Limits: Limits{MaxBytes: 1 << 20, MaxEntries: 64}})
		filepath.WalkDir(outer, func(p string, d fs.DirEntry, err error) error {
			if p == outer || p == sentinel || p == filepath.Dir(dst) || p == dst || strings.HasPrefix(p, dst+"/") {
				return nil
			}
			t.Fatalf("created outside the destination: %s", p)
			return nil
		})
		if b, _ := os.ReadFile(sentinel); string(b) != "x" {
			t.Fatal("the file beside the destination changed")
		}
	})
}
