package oci

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// testRegistry is an in-process registry. Images are pushed straight to
// it; Fetch goes through host, whose handler counts blob downloads and may
// be wrapped (auth).
type testRegistry struct {
	push      string // host:port without wrapping
	host      string // host:port Fetch uses
	blobGets  atomic.Int64
	manifests atomic.Int64
}

func newRegistry(t *testing.T, wrap func(http.Handler) http.Handler) *testRegistry {
	t.Helper()
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	tr := &testRegistry{}
	direct := httptest.NewServer(h)
	t.Cleanup(direct.Close)
	var counted http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			tr.blobGets.Add(1)
		}
		if strings.Contains(r.URL.Path, "/manifests/") {
			tr.manifests.Add(1)
		}
		h.ServeHTTP(w, r)
	})
	if wrap != nil {
		counted = wrap(counted)
	}
	srv := httptest.NewServer(counted)
	t.Cleanup(srv.Close)
	tr.push = strings.TrimPrefix(direct.URL, "http://")
	tr.host = strings.TrimPrefix(srv.URL, "http://")
	return tr
}

func (r *testRegistry) pushImage(t *testing.T, repoTag string, img v1.Image) {
	t.Helper()
	ref, err := name.ParseReference(r.push + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push %s: %v", repoTag, err)
	}
}

func (r *testRegistry) pushIndex(t *testing.T, repoTag string, idx v1.ImageIndex) {
	t.Helper()
	ref, err := name.ParseReference(r.push + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatalf("push %s: %v", repoTag, err)
	}
}

func platformImage(t *testing.T, arch string, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config.Env = []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8"}
	cf.Config.Entrypoint = []string{"/entry"}
	cf.Config.Cmd = []string{"serve", "--port=80"}
	cf.Config.User = "1000:1000"
	cf.Config.WorkingDir = "/srv"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// standardImage has standardLayers' content as a gzip layer (compressed by
// go-containerregistry), a zstd layer and an uncompressed one.
func standardImage(t *testing.T) v1.Image {
	t.Helper()
	paths := standardLayers(t)
	blobs := make([][]byte, len(paths))
	for i, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		blobs[i] = b
	}
	// Layer 1 is gzip already; hand tarball the decompressed tar so it
	// compresses it itself.
	raw := gunzip(t, blobs[0])
	l1, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
	if err != nil {
		t.Fatal(err)
	}
	l2 := static.NewLayer(blobs[1], types.OCILayerZStd)
	l3 := static.NewLayer(blobs[2], types.OCIUncompressedLayer)
	return platformImage(t, "amd64", l1, l2, l3)
}

func gunzip(t *testing.T, b []byte) []byte {
	t.Helper()
	r, _, err := layerReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// hermeticDockerConfig points the default keychain at an empty
// configuration.
func hermeticDockerConfig(t *testing.T) string {
	t.Helper()
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("DOCKER_CONFIG", filepath.Join(home, "docker"))
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, "config"))
	t.Setenv("XDG_RUNTIME_DIR", filepath.Join(home, "run"))
	t.Setenv("REGISTRY_AUTH_FILE", filepath.Join(home, "none.json"))
	return filepath.Join(home, "docker")
}

func TestFetch(t *testing.T) {
	hermeticDockerConfig(t)
	reg := newRegistry(t, nil)
	img := standardImage(t)
	reg.pushImage(t, "test/std:v1", img)
	wantDigest, _ := img.Digest()

	var (
		mu    sync.Mutex
		lines []string
	)
	p := &Puller{CacheDir: t.TempDir(), Progress: func(m string) { mu.Lock(); lines = append(lines, m); mu.Unlock() }}
	f, err := p.Fetch(context.Background(), reg.host+"/test/std:v1")
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if f.Digest != wantDigest.String() || f.Ref != reg.host+"/test/std:v1" {
		t.Errorf("Ref, Digest = %s, %s", f.Ref, f.Digest)
	}
	if len(f.Layers) != 3 || len(f.LayerDigests) != 3 {
		t.Fatalf("layers %v %v", f.Layers, f.LayerDigests)
	}
	layers, _ := img.Layers()
	for i, path := range f.Layers {
		d, _ := layers[i].Digest()
		if f.LayerDigests[i] != d.String() {
			t.Errorf("layer %d digest %s, want %s", i, f.LayerDigests[i], d)
		}
		if path != filepath.Join(p.CacheDir, "oci", "blobs", "sha256", d.Hex) {
			t.Errorf("layer %d cached at %s", i, path)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != d.Hex {
			t.Errorf("layer %d: cached content does not match its digest", i)
		}
	}
	want := ImageConfig{
		Env: []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8"}, Entrypoint: []string{"/entry"},
		Cmd: []string{"serve", "--port=80"}, User: "1000:1000", WorkingDir: "/srv",
	}
	if strings.Join(f.Config.Env, "|") != strings.Join(want.Env, "|") || f.Config.User != want.User ||
		f.Config.WorkingDir != want.WorkingDir || strings.Join(f.Config.Cmd, " ") != "serve --port=80" ||
		strings.Join(f.Config.Entrypoint, " ") != "/entry" {
		t.Errorf("Config = %+v", f.Config)
	}
	if n := reg.blobGets.Load(); n != 4 { // config + 3 layers
		t.Errorf("first Fetch made %d blob requests, want 4", n)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "layer 2/3 sha256:") {
		t.Errorf("progress: %q", lines)
	}
	ents, _ := os.ReadDir(BlobDir(p.CacheDir))
	if len(ents) != 4 {
		t.Errorf("cache holds %d files, want 4 (no temporaries)", len(ents))
	}

	// Second Fetch: manifest only.
	reg.blobGets.Store(0)
	lines = nil
	f2, err := (&Puller{CacheDir: p.CacheDir, Progress: p.Progress}).Fetch(context.Background(), reg.host+"/test/std:v1")
	if err != nil {
		t.Fatalf("second Fetch: %v", err)
	}
	if n := reg.blobGets.Load(); n != 0 {
		t.Errorf("second Fetch made %d blob requests", n)
	}
	if strings.Count(strings.Join(lines, "\n"), "(cached)") != 3 {
		t.Errorf("progress: %q", lines)
	}
	if strings.Join(f2.Layers, ",") != strings.Join(f.Layers, ",") {
		t.Errorf("second Fetch layers differ")
	}

	// The cached layers flatten to the standard tree.
	tree, err := Flatten(context.Background(), f.Layers, filepath.Join(t.TempDir(), "rootfs"))
	if err != nil {
		t.Fatalf("Flatten: %v", err)
	}
	if b, _ := tree.ReadFile("/etc/hostname"); string(b) != "layer2\n" {
		t.Errorf("hostname %q", b)
	}
	if tree.Has("/etc/gone") || !tree.Has("/usr/bin/added") || tree.Owners["/usr/bin/su"].Mode != os.ModeSetuid|0o755 {
		t.Errorf("flattened tree wrong: su %+v", tree.Owners["/usr/bin/su"])
	}

	// A corrupt cache entry of the wrong size is fetched again.
	if err := os.WriteFile(f.Layers[0], []byte("truncated"), 0o644); err != nil {
		t.Fatal(err)
	}
	reg.blobGets.Store(0)
	if _, err := p.Fetch(context.Background(), reg.host+"/test/std:v1"); err != nil {
		t.Fatal(err)
	}
	if n := reg.blobGets.Load(); n != 1 {
		t.Errorf("refetch made %d blob requests, want 1", n)
	}
}

func TestFetchConcurrent(t *testing.T) {
	hermeticDockerConfig(t)
	reg := newRegistry(t, nil)
	img := platformImage(t, "amd64", mustRandomLayer(t), mustRandomLayer(t))
	reg.pushImage(t, "test/c:1", img)
	p := &Puller{CacheDir: t.TempDir()}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = p.Fetch(context.Background(), reg.host+"/test/c:1")
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	ents, _ := os.ReadDir(BlobDir(p.CacheDir))
	if len(ents) != 3 {
		t.Errorf("cache holds %d files, want 3", len(ents))
	}
}

func mustRandomLayer(t *testing.T) v1.Layer {
	t.Helper()
	l, err := random.Layer(4096, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestFetchPlatforms(t *testing.T) {
	hermeticDockerConfig(t)
	reg := newRegistry(t, nil)
	amd := platformImage(t, "amd64", static.NewLayer(tarBytes(t, file("arch", "amd64", 0o644)), types.OCIUncompressedLayer))
	arm := platformImage(t, "arm64", static.NewLayer(tarBytes(t, file("arch", "arm64", 0o644)), types.OCIUncompressedLayer))
	add := func(img v1.Image, arch string) mutate.IndexAddendum {
		return mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}}
	}
	multi := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), add(arm, "arm64"), add(amd, "amd64"))
	reg.pushIndex(t, "test/multi:latest", multi)
	armOnly := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), add(arm, "arm64"))
	reg.pushIndex(t, "test/armonly:latest", armOnly)
	reg.pushImage(t, "test/armimage:latest", arm)

	p := &Puller{CacheDir: t.TempDir()}
	f, err := p.Fetch(context.Background(), reg.host+"/test/multi")
	if err != nil {
		t.Fatalf("multi: %v", err)
	}
	amdDigest, _ := amd.Digest()
	if f.Digest != amdDigest.String() {
		t.Errorf("multi picked %s, want the amd64 image %s", f.Digest, amdDigest)
	}
	tree, err := Flatten(context.Background(), f.Layers, filepath.Join(t.TempDir(), "r"))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := tree.ReadFile("arch"); string(b) != "amd64" {
		t.Errorf("arch file = %q", b)
	}

	_, err = p.Fetch(context.Background(), reg.host+"/test/armonly")
	if err == nil || !strings.Contains(err.Error(), "no linux/amd64") || !strings.Contains(err.Error(), "linux/arm64") {
		t.Errorf("arm64-only index: err = %v", err)
	}
	t.Logf("arm64-only index: %v", err)
	_, err = p.Fetch(context.Background(), reg.host+"/test/armimage")
	if err == nil || !strings.Contains(err.Error(), "linux/arm64") || !strings.Contains(err.Error(), "only linux/amd64") {
		t.Errorf("arm64 image: err = %v", err)
	}
	t.Logf("arm64 image: %v", err)
	_, err = p.Fetch(context.Background(), reg.host+"/test/missing:1")
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("missing image: err = %v", err)
	}
}

func TestFetchDockerConfigAuth(t *testing.T) {
	cfgDir := hermeticDockerConfig(t)
	reg := newRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, pw, ok := r.BasicAuth(); !ok || u != "alice" || pw != "s3cret" {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	reg.pushImage(t, "private/app:1", platformImage(t, "amd64", mustRandomLayer(t)))
	ref := reg.host + "/private/app:1"

	_, err := (&Puller{CacheDir: t.TempDir()}).Fetch(context.Background(), ref)
	if err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "docker login "+reg.host) {
		t.Fatalf("without credentials: err = %v", err)
	}
	t.Logf("without credentials: %v", err)

	if err := os.MkdirAll(cfgDir, 0o700); err != nil {
		t.Fatal(err)
	}
	auth := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	cfg := `{"auths": {"` + reg.host + `": {"auth": "` + auth + `"}}}`
	if err := os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := (&Puller{CacheDir: t.TempDir()}).Fetch(context.Background(), ref)
	if err != nil {
		t.Fatalf("with credentials: %v", err)
	}
	if len(f.Layers) != 1 {
		t.Errorf("layers: %v", f.Layers)
	}
}
