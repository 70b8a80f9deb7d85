package catalog_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/banger-dev/banger/internal/catalog"
	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/internal/trust"
)

// bombSize is what each bomb would unpack to: 128 MiB of 0x01 bytes (not
// zeros, which the client would leave as holes), from a few KiB of zstd.
const bombSize = 128 << 20

// zstdBomb is a zstd tar of an image's manifest.json and rootfs.ext4, with
// bulk bytes of 0x01 either as rootfs.ext4 itself (inFile) or after the
// tar's end, inside the zstd stream.
func zstdBomb(t *testing.T, name, version string, inFile bool) []byte {
	t.Helper()
	var out bytes.Buffer
	zw, err := zstd.NewWriter(&out, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(zw)
	man := manifestJSON(catalog.KindImage, name, version)
	tw.WriteHeader(&tar.Header{Name: catalog.ManifestFile, Typeflag: tar.TypeReg, Mode: 0o444, Size: int64(len(man)), ModTime: time.Unix(0, 0)})
	tw.Write([]byte(man))
	chunk := bytes.Repeat([]byte{1}, 1<<20)
	rootfs := int64(4096)
	if inFile {
		rootfs = bombSize
	}
	tw.WriteHeader(&tar.Header{Name: catalog.RootfsFile, Typeflag: tar.TypeReg, Mode: 0o444, Size: rootfs, ModTime: time.Unix(0, 0)})
	for w := int64(0); w < rootfs; w += int64(len(chunk)) {
		tw.Write(chunk[:min(int64(len(chunk)), rootfs-w)])
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if !inFile {
		for range bombSize / len(chunk) {
			zw.Write(chunk)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// diskBytes is the space the files under dir take (st_blocks).
func diskBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil {
			if fi, err := d.Info(); err == nil {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					n += st.Blocks * 512
				}
			}
		}
		return nil
	})
	return n
}

// TestZstdBombRefusedWhileStreaming: a mirror serves a zstd bomb (a few KiB
// that unpack to 128 MiB) in place of a bundle. The client must refuse it
// once it unpacks past the signed unpacked_size (or, for an index that gives
// none, past the client's cap), while the download is still going: the
// server holds back the bomb's last bytes until Pull has returned. The
// refusal is one line, and nothing is left behind.
func TestZstdBombRefusedWhileStreaming(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	for _, tc := range []struct {
		name   string
		inFile bool // the bulk is rootfs.ext4 (else: after the tar)
		signed bool // the index signs unpacked_size (else: the client's cap)
	}{
		{"big rootfs, signed size", true, true},
		{"bytes after the tar, signed size", false, true},
		{"big rootfs, client cap", true, false},
		{"bytes after the tar, client cap", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := t.TempDir()
			var e catalog.Entry
			if tc.signed {
				res := publish(t, out, k, catalog.KindImage, "img", func(from string) {
					writeFile(t, filepath.Join(from, "rootfs.ext4"), randomBytes(t, 64<<10))
				})
				e = res.Entry
				if e.UnpackedSize <= 0 || e.UnpackedSize > 1<<20 {
					t.Fatalf("publisher signed unpacked_size %d", e.UnpackedSize)
				}
			} else {
				e = handBundle(t, out, "img", "1", []tarEnt{reg("manifest.json", manifestJSON(catalog.KindImage, "img", "1")), reg("rootfs.ext4", string(randomBytes(t, 64<<10)))})
				signIndex(t, out, k, catalog.KindImage, e)
			}
			bomb := zstdBomb(t, "img", e.Version, tc.inFile)
			if int64(len(bomb)) >= e.Size {
				t.Fatalf("bomb of %d bytes is not smaller than the signed size %d", len(bomb), e.Size)
			}
			t.Logf("bomb: %d bytes of zstd for %d MiB", len(bomb), bombSize>>20)

			srv := newServer(t, out)
			release := make(chan struct{})
			srv.hook("/"+e.Bundle, func(w http.ResponseWriter, r *http.Request) {
				w.Write(bomb[:len(bomb)-16])
				w.(http.Flusher).Flush()
				select { // the end of the stream only once Pull has returned
				case <-release:
				case <-r.Context().Done():
					return
				}
				w.Write(bomb[len(bomb)-16:])
			})
			c := srv.client(k)
			c.MaxUnpackedBytes = 1 << 20 // the config cap (catalog.max_unpacked_size)
			ix, err := c.FetchIndex(context.Background(), srv.indexURL(), catalog.KindImage)
			if err != nil {
				t.Fatal(err)
			}
			dest := t.TempDir()
			done := make(chan error, 1)
			go func() {
				_, err := c.Pull(context.Background(), ix, e, dest, nil)
				done <- err
			}()
			var peak int64
			deadline := time.After(30 * time.Second)
		wait:
			for {
				select {
				case err = <-done:
					break wait
				case <-deadline:
					peak = max(peak, diskBytes(dest))
					close(release)
					err = <-done
					t.Fatalf("Pull still unpacking while the server held the end of the bomb (%d MiB on disk in %s); it ended with: %v",
						peak>>20, dest, err)
				case <-time.After(20 * time.Millisecond):
					peak = max(peak, diskBytes(dest))
				}
			}
			close(release)
			if !errors.Is(err, trust.ErrTooLarge) || !strings.Contains(err.Error(), "unpacks to more than") || !strings.Contains(err.Error(), "refusing") {
				t.Fatalf("err = %v, want an ErrTooLarge refusal", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			t.Logf("refused: %v", err)
			if peak > 2<<20 {
				t.Errorf("%d bytes were on disk during the pull; the cap is %d", peak, c.MaxUnpackedBytes)
			}
			assertClean(t, dest)
		})
	}
}

// TestSignedUnpackedSize: the publisher signs the exact unpacked size, a
// bundle holding to it pulls, a signed size over the client's cap is refused
// before any download, and a bundle that unpacks to less than its signed
// size is refused as inconsistent.
func TestSignedUnpackedSize(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	out := t.TempDir()
	res := publish(t, out, k, catalog.KindImage, "img", func(from string) {
		writeFile(t, filepath.Join(from, "rootfs.ext4"), randomBytes(t, 100_000))
	})
	data, _ := os.ReadFile(res.BundlePath)
	zr, _ := zstd.NewReader(bytes.NewReader(data))
	raw, _ := io.ReadAll(zr)
	zr.Close()
	if res.Entry.UnpackedSize != int64(len(raw)) {
		t.Fatalf("signed unpacked_size %d, the bundle unpacks to %d", res.Entry.UnpackedSize, len(raw))
	}
	srv := newServer(t, out)
	c := srv.client(k)
	ix, err := c.FetchIndex(context.Background(), srv.indexURL(), catalog.KindImage)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pull(context.Background(), ix, ix.Entries[0], t.TempDir(), nil); err != nil {
		t.Fatalf("bundle within its signed size: %v", err)
	}
	small := srv.client(k)
	small.MaxUnpackedBytes = res.Entry.UnpackedSize - 1
	dest := t.TempDir()
	before := srv.bundleRequests()
	if _, err := small.Pull(context.Background(), ix, ix.Entries[0], dest, nil); !errors.Is(err, trust.ErrTooLarge) || !strings.Contains(err.Error(), "max_unpacked_size") {
		t.Fatalf("signed size over the cap: err = %v", err)
	}
	if srv.bundleRequests() != before {
		t.Error("a bundle over the cap was requested")
	}
	assertClean(t, dest)

	// A signed size larger than the bundle's: the catalog is inconsistent.
	e := ix.Entries[0]
	e.UnpackedSize += 512
	signIndex(t, out, k, catalog.KindImage, e)
	ix, err = c.FetchIndex(context.Background(), srv.indexURL(), catalog.KindImage)
	if err != nil {
		t.Fatal(err)
	}
	dest = t.TempDir()
	if _, err := c.Pull(context.Background(), ix, e, dest, nil); !errors.Is(err, catalog.ErrBadBundle) || !strings.Contains(err.Error(), "inconsistent") {
		t.Fatalf("bundle short of its signed unpacked size: err = %v", err)
	}
	assertClean(t, dest)
	// Out of range in the index.
	e.UnpackedSize = -1
	if err := catalog.ValidateEntry(catalog.KindImage, e); !errors.Is(err, catalog.ErrBadIndex) {
		t.Fatalf("negative unpacked_size: err = %v", err)
	}
}
