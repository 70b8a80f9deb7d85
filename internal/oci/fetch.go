package oci

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"
)

// The only platform banger guests run.
const (
	wantOS   = "linux"
	wantArch = "amd64"
)

// parallelBlobs bounds concurrent blob downloads within one Fetch.
const parallelBlobs = 3

// maxConfigBytes caps an image config blob (real ones are kilobytes).
const maxConfigBytes = 8 << 20

// Puller fetches images (linux/amd64 only) with go-containerregistry and
// caches their blobs. The zero value needs only CacheDir. A Puller must not
// be copied after first use; concurrent Fetch calls on one Puller share
// downloads of the same blob.
type Puller struct {
	// CacheDir is the cache root; blobs live in CacheDir/oci/blobs/sha256/<hex>,
	// compressed as served, written via a temporary file and a rename after
	// their digest was checked.
	CacheDir string
	// Keychain resolves registry credentials; nil means
	// authn.DefaultKeychain (docker config.json, anonymous otherwise).
	Keychain authn.Keychain
	// Transport, when set, carries the registry requests (tests).
	Transport http.RoundTripper
	// Progress, when set, receives one line per step. It may be called from
	// several goroutines, but never concurrently.
	Progress func(msg string)
	// Insecure allows plain-http registries (name.Insecure). Loopback and
	// private addresses are already reached over http by go-containerregistry.
	Insecure bool
	// Limits caps the layers a manifest may declare: a layer whose
	// (compressed) size is over MaxLayerBytes, or layers summing to more
	// than MaxImageBytes, are refused before anything is downloaded. Pass
	// the same Limits to FlattenWithLimits, which caps what they unpack to.
	Limits Limits

	flight     singleflight.Group
	progressMu sync.Mutex
}

// Fetched describes an image whose blobs are in the cache.
type Fetched struct {
	// Ref is the fully qualified reference that was resolved, e.g.
	// "index.docker.io/library/debian:bookworm".
	Ref string
	// Digest is the manifest digest of the linux/amd64 image (not of the
	// index it may have been picked from).
	Digest string
	// Layers are the cached blob paths, oldest first.
	Layers []string
	// LayerDigests are the layers' (compressed) digests, in the same order.
	LayerDigests []string
	// Config is the runtime part of the image config.
	Config ImageConfig
}

// ImageConfig is the part of an image config banger uses.
type ImageConfig struct {
	Env        []string
	Entrypoint []string
	Cmd        []string
	User       string
	WorkingDir string
}

// BlobDir is where the cache keeps blobs, below a cache root.
func BlobDir(cacheDir string) string {
	return filepath.Join(cacheDir, "oci", "blobs", "sha256")
}

func (p *Puller) progress(format string, args ...any) {
	if p.Progress == nil {
		return
	}
	p.progressMu.Lock()
	defer p.progressMu.Unlock()
	p.Progress(fmt.Sprintf(format, args...))
}

// Fetch resolves ref, picks its linux/amd64 image and makes sure the image's
// config and layers are in the cache. Blobs already cached are not requested
// again; the manifest always is (a tag may have moved).
func (p *Puller) Fetch(ctx context.Context, ref string) (*Fetched, error) {
	if p.CacheDir == "" {
		return nil, errors.New("oci: Puller.CacheDir is not set")
	}
	var nopts []name.Option
	if p.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nopts...)
	if err != nil {
		return nil, fmt.Errorf("invalid image reference %q: %w", ref, err)
	}
	kc := p.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	ropts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(kc),
		remote.WithUserAgent("banger"),
	}
	if p.Transport != nil {
		ropts = append(ropts, remote.WithTransport(p.Transport))
	}

	desc, err := remote.Get(r, ropts...)
	if err != nil {
		return nil, registryError(r, err)
	}
	img, err := pickImage(r, desc)
	if err != nil {
		return nil, err
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, registryError(r, err)
	}
	p.progress("resolved %s to %s", r.Name(), digest)
	m, err := img.Manifest()
	if err != nil {
		return nil, registryError(r, err)
	}

	if m.Config.Size > maxConfigBytes {
		return nil, fmt.Errorf("image %s: its config is %d bytes, more than the %d a config may be; refusing", r.Name(), m.Config.Size, maxConfigBytes)
	}
	var declared int64
	for i, l := range m.Layers {
		if l.Size < 0 || l.Size > p.Limits.layerCap() {
			return nil, &tooLarge{fmt.Sprintf("image %s: layer %d/%d is %s, more than the cap for one layer (%s, oci.max_layer_size); refusing",
				r.Name(), i+1, len(m.Layers), humanBytes(l.Size), humanBytes(p.Limits.layerCap()))}
		}
		if declared += l.Size; declared > p.Limits.imageCap() {
			return nil, &tooLarge{fmt.Sprintf("image %s: its layers are more than the cap for one image (%s, oci.max_image_size); refusing",
				r.Name(), humanBytes(p.Limits.imageCap()))}
		}
	}

	cfg, err := p.config(ctx, img, m)
	if err != nil {
		return nil, registryError(r, err)
	}
	if (cfg.OS != "" && cfg.OS != wantOS) || (cfg.Architecture != "" && cfg.Architecture != wantArch) {
		return nil, fmt.Errorf("image %s is %s/%s; only %s/%s images can be imported", r.Name(), cfg.OS, cfg.Architecture, wantOS, wantArch)
	}

	layers, err := img.Layers()
	if err != nil {
		return nil, registryError(r, err)
	}
	f := &Fetched{
		Ref:          r.Name(),
		Digest:       digest.String(),
		Layers:       make([]string, len(layers)),
		LayerDigests: make([]string, len(layers)),
		Config: ImageConfig{
			Env:        cfg.Config.Env,
			Entrypoint: cfg.Config.Entrypoint,
			Cmd:        cfg.Config.Cmd,
			User:       cfg.Config.User,
			WorkingDir: cfg.Config.WorkingDir,
		},
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallelBlobs)
	for i, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return nil, registryError(r, err)
		}
		size, err := l.Size()
		if err != nil {
			return nil, registryError(r, err)
		}
		f.LayerDigests[i] = d.String()
		g.Go(func() error {
			label := fmt.Sprintf("layer %d/%d %s %s", i+1, len(layers), shortDigest(d), humanBytes(size))
			path, err := p.blob(gctx, d, size, label, l.Compressed)
			if err != nil {
				return fmt.Errorf("%s: %w", label, registryError(r, err))
			}
			f.Layers[i] = path
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return f, nil
}

// pickImage returns desc itself when it is an image, or its linux/amd64
// child when it is an index.
func pickImage(r name.Reference, desc *remote.Descriptor) (v1.Image, error) {
	if !desc.MediaType.IsIndex() {
		img, err := desc.Image()
		if err != nil {
			return nil, registryError(r, err)
		}
		return img, nil
	}
	idx, err := desc.ImageIndex()
	if err != nil {
		return nil, registryError(r, err)
	}
	for depth := 0; ; depth++ {
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, registryError(r, err)
		}
		var (
			best      *v1.Descriptor
			available []string
		)
		for i := range im.Manifests {
			c := &im.Manifests[i]
			if c.Platform == nil {
				continue
			}
			pl := c.Platform.OS + "/" + c.Platform.Architecture
			if c.Platform.Variant != "" {
				pl += "/" + c.Platform.Variant
			}
			if c.Platform.OS == "unknown" { // attestations
				continue
			}
			available = append(available, pl)
			if c.Platform.OS != wantOS || c.Platform.Architecture != wantArch {
				continue
			}
			// Prefer the baseline amd64 build over v2/v3 micro-architectures.
			if best == nil || (best.Platform.Variant != "" && (c.Platform.Variant == "" || c.Platform.Variant == "v1")) {
				best = c
			}
		}
		if best == nil {
			if len(available) == 0 {
				available = []string{"none declared"}
			}
			return nil, fmt.Errorf("image %s has no %s/%s variant (available: %s)", r.Name(), wantOS, wantArch, strings.Join(available, ", "))
		}
		if best.MediaType.IsIndex() {
			if depth > 0 {
				return nil, fmt.Errorf("image %s: indexes nested more than two deep are not supported", r.Name())
			}
			idx, err = idx.ImageIndex(best.Digest)
			if err != nil {
				return nil, registryError(r, err)
			}
			continue
		}
		img, err := idx.Image(best.Digest)
		if err != nil {
			return nil, registryError(r, err)
		}
		return img, nil
	}
}

// config returns the image's config file, from the cache when it is there.
func (p *Puller) config(ctx context.Context, img v1.Image, m *v1.Manifest) (*v1.ConfigFile, error) {
	d := m.Config.Digest
	path, err := p.blob(ctx, d, m.Config.Size, "", func() (io.ReadCloser, error) {
		raw, err := img.RawConfigFile()
		if err != nil {
			return nil, err
		}
		return io.NopCloser(strings.NewReader(string(raw))), nil
	})
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", shortDigest(d), err)
	}
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	cf, err := v1.ParseConfigFile(fh)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", shortDigest(d), err)
	}
	return cf, nil
}

// blob makes sure the blob d of the given size is in the cache and returns
// its path. open is only called when it is not. label, when set, is
// reported through Progress.
func (p *Puller) blob(ctx context.Context, d v1.Hash, size int64, label string, open func() (io.ReadCloser, error)) (string, error) {
	if d.Algorithm != "sha256" || len(d.Hex) != 64 || !isHex(d.Hex) {
		return "", fmt.Errorf("unsupported digest %q", d.String())
	}
	dir := BlobDir(p.CacheDir)
	final := filepath.Join(dir, d.Hex)
	if cached(final, size) {
		if label != "" {
			p.progress("%s (cached)", label)
		}
		return final, nil
	}
	_, err, _ := p.flight.Do(d.Hex, func() (any, error) {
		if cached(final, size) { // another caller just finished it
			return nil, nil
		}
		if label != "" {
			p.progress("%s", label)
		}
		return nil, download(ctx, dir, d.Hex, size, open)
	})
	if err != nil {
		return "", err
	}
	return final, nil
}

func cached(path string, size int64) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.Mode().IsRegular() && (size < 0 || fi.Size() == size)
}

// download writes the blob into dir/<hexDigest> through a temporary file,
// renamed into place only once size and digest match.
func download(ctx context.Context, dir, hexDigest string, size int64, open func() (io.ReadCloser, error)) (err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".tmp-"+hexDigest[:12]+"-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	rc, err := open()
	if err != nil {
		return err
	}
	defer rc.Close()
	h := sha256.New()
	var src io.Reader = ctxReader{ctx, rc}
	if size >= 0 {
		src = io.LimitReader(src, size+1) // never more than the manifest declared
	}
	n, err := io.Copy(io.MultiWriter(tmp, h), src)
	if err != nil {
		return err
	}
	if size >= 0 && n != size {
		return fmt.Errorf("blob sha256:%s: got %d bytes, manifest says %d", hexDigest, n, size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != hexDigest {
		return fmt.Errorf("blob sha256:%s: content has digest sha256:%s", hexDigest, got)
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, hexDigest))
}

// ctxReader stops a copy once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}

// registryError turns authentication and not-found answers into messages
// that say what to do.
func registryError(r name.Reference, err error) error {
	var te *transport.Error
	if !errors.As(err, &te) {
		return err
	}
	reg := r.Context().RegistryStr()
	switch te.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("registry %s refused access to %s (HTTP %d): log in with `docker login %s` or add credentials for it to the docker config.json ($DOCKER_CONFIG or ~/.docker): %w",
			reg, r.Context().RepositoryStr(), te.StatusCode, reg, err)
	case http.StatusNotFound:
		return fmt.Errorf("image %s not found on %s: %w", r.Name(), reg, err)
	}
	return err
}

func isHex(s string) bool {
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func shortDigest(d v1.Hash) string {
	if len(d.Hex) > 12 {
		return d.Algorithm + ":" + d.Hex[:12] + "…"
	}
	return d.String()
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, suffix := float64(n)/unit, "KiB"
	for _, s := range []string{"MiB", "GiB", "TiB"} {
		if v < unit {
			break
		}
		v, suffix = v/unit, s
	}
	return fmt.Sprintf("%.1f %s", v, suffix)
}
