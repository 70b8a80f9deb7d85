package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// bombBytes is what the gzip bomb unpacks to: 128 MiB of 0x01 in one file,
// from about 128 KiB of gzip (deflate tops out near 1000:1).
const bombBytes = 128 << 20

// testLimits stand for a config of oci.max_layer_size = 1M,
// oci.max_image_size = 1536K.
var testLimits = Limits{MaxLayerBytes: 1 << 20, MaxImageBytes: 3 << 19}

// gzipTar gzips a tar holding, for each size, a regular file of that many
// 0x01 bytes (streamed, never all in memory), plus empties empty files.
func gzipTar(t *testing.T, empties int, sizes ...int64) []byte {
	t.Helper()
	var out bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&out, gzip.BestCompression)
	tw := tar.NewWriter(zw)
	chunk := bytes.Repeat([]byte{1}, 1<<20)
	for i, size := range sizes {
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("big%d", i), Typeflag: tar.TypeReg, Mode: 0o644, Size: size}); err != nil {
			t.Fatal(err)
		}
		for w := int64(0); w < size; w += int64(len(chunk)) {
			tw.Write(chunk[:min(int64(len(chunk)), size-w)])
		}
	}
	for i := range empties {
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("d/%06d", i), Typeflag: tar.TypeReg, Mode: 0o644})
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	zw.Close()
	return out.Bytes()
}

// diskUse is the space the files under dir take (st_blocks).
func diskUse(dir string) int64 {
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

// TestGzipBombLayerRefused: layers pulled from a registry (a real one,
// over HTTP) that unpack past the configured caps are refused while they
// stream, with a one-line ErrTooLarge, and the partial tree is removed:
// one gzip bomb layer (128 MiB from ~128 KiB), a layer of many empty files
// (its stream, not its file bytes, is over), and two layers each under the
// layer cap but together over the image cap. Layers within the caps
// flatten as before.
func TestGzipBombLayerRefused(t *testing.T) {
	hermeticDockerConfig(t)
	reg := newRegistry(t, nil)
	for _, tc := range []struct {
		name   string
		layers [][]byte
		want   string // "" means: must flatten
	}{
		{"gzip bomb", [][]byte{gzipTar(t, 0, bombBytes)}, "oci.max_layer_size"},
		{"many empty files", [][]byte{gzipTar(t, 4000)}, "oci.max_layer_size"},
		{"layers over the image cap", [][]byte{gzipTar(t, 0, 900<<10), gzipTar(t, 0, 900<<10)}, "oci.max_image_size"},
		{"within the caps (control)", [][]byte{gzipTar(t, 100, 900<<10), gzipTar(t, 0, 500<<10)}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ls []v1.Layer
			for _, b := range tc.layers {
				ls = append(ls, static.NewLayer(b, types.DockerLayer))
			}
			repo := "test/" + strings.Trim(regexp.MustCompile(`[^a-z0-9]+`).ReplaceAllString(tc.name, "-"), "-") + ":v1"
			reg.pushImage(t, repo, platformImage(t, "amd64", ls...))
			p := &Puller{CacheDir: t.TempDir(), Limits: testLimits}
			f, err := p.Fetch(context.Background(), reg.host+"/"+repo)
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			dest := filepath.Join(t.TempDir(), "rootfs")
			tree, err := FlattenWithLimits(context.Background(), f.Layers, dest, testLimits)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("layers within the caps refused: %v", err)
				}
				if tree.Bytes != 500<<10 { // layer 2's big0 replaced layer 1's (both counted against the image cap)
					t.Fatalf("tree holds %d bytes", tree.Bytes)
				}
				return
			}
			if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "refusing") {
				t.Fatalf("err = %v, want ErrTooLarge naming %s", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			t.Logf("refused: %v", err)
			if _, err := os.Lstat(dest); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("the partial tree %s was left behind (%v)", dest, err)
			}
		})
	}
}

// TestGzipBombRefusedWhileStreaming: the bomb layer is read from a pipe
// whose writer holds back the last bytes until Flatten has returned, so a
// refusal that only came at the end of the layer would never come. Flatten
// must refuse before the bomb's file is written.
func TestGzipBombRefusedWhileStreaming(t *testing.T) {
	bomb := gzipTar(t, 0, bombBytes)
	fifo := filepath.Join(t.TempDir(), "layer")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	go func() {
		w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err != nil {
			return
		}
		defer w.Close()
		if _, err := w.Write(bomb[:len(bomb)-64]); err != nil {
			return
		}
		<-release
		w.Write(bomb[len(bomb)-64:])
	}()
	dest := filepath.Join(t.TempDir(), "rootfs")
	done := make(chan error, 1)
	go func() {
		_, err := FlattenWithLimits(context.Background(), []string{fifo}, dest, testLimits)
		done <- err
	}()
	var peak int64
	deadline := time.After(30 * time.Second)
	for {
		select {
		case err := <-done:
			close(release)
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("err = %v, want ErrTooLarge", err)
			}
			if peak > 2<<20 {
				t.Errorf("%d bytes were on disk during the flatten; the layer cap is %d", peak, testLimits.MaxLayerBytes)
			}
			if _, err := os.Lstat(dest); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("the partial tree was left behind (%v)", err)
			}
			return
		case <-deadline:
			peak = max(peak, diskUse(dest))
			close(release)
			err := <-done
			t.Fatalf("Flatten still unpacking while the layer's end was held back (%d MiB on disk); it ended with: %v", peak>>20, err)
		case <-time.After(20 * time.Millisecond):
			peak = max(peak, diskUse(dest))
		}
	}
}

// TestFetchRefusesOversizeLayers: a manifest declaring a layer (compressed)
// over the layer cap, or layers over the image cap, is refused before any
// blob is downloaded.
func TestFetchRefusesOversizeLayers(t *testing.T) {
	hermeticDockerConfig(t)
	reg := newRegistry(t, nil)
	noise := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		return b
	}
	for _, tc := range []struct {
		name   string
		layers [][]byte
		want   string
	}{
		{"one layer over the layer cap", [][]byte{noise(1<<20 + 1)}, "oci.max_layer_size"},
		{"layers over the image cap", [][]byte{noise(800 << 10), noise(800 << 10)}, "oci.max_image_size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ls []v1.Layer
			for _, b := range tc.layers {
				ls = append(ls, static.NewLayer(b, types.DockerLayer))
			}
			repo := "test/" + strings.Trim(regexp.MustCompile(`[^a-z0-9]+`).ReplaceAllString(tc.name, "-"), "-") + ":v1"
			reg.pushImage(t, repo, platformImage(t, "amd64", ls...))
			before := reg.blobGets.Load()
			p := &Puller{CacheDir: t.TempDir(), Limits: testLimits}
			_, err := p.Fetch(context.Background(), reg.host+"/"+repo)
			if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrTooLarge naming %s", err, tc.want)
			}
			if n := reg.blobGets.Load() - before; n != 0 {
				t.Errorf("%d blobs downloaded for a refused image", n)
			}
			if ents, _ := os.ReadDir(BlobDir(p.CacheDir)); len(ents) != 0 {
				t.Errorf("cache holds %d files", len(ents))
			}
		})
	}
}
