// Package derive builds a repository's derived image: the base image named
// in its .banger/image.toml (internal/imagespec) plus extra Debian packages,
// files from the repository and shell steps. Nothing from the repository
// runs on the host: the build happens in a throwaway VM of the base image
// (with NAT, for apt), whose /root carries the build script and the files;
// when the script succeeds the VM is stopped cleanly, its root disk is
// handed over by the root helper (priv.release_rootfs) and registered as
// the image, and the VM is deleted. Images are named
// <repository>-<key>, where the key hashes the base image and everything
// the file names, so an unchanged repository reuses its image and
// concurrent builds of one key build once.
package derive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/imagespec"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/sysexec"
	"github.com/banger-dev/banger/internal/vm"
)

// BuildTimeout bounds one build VM's script.
var BuildTimeout = 30 * time.Minute

// Service builds derived images.
type Service struct {
	VMs    *vm.Service
	Images *image.Service
	Layout paths.Layout
	Config config.Config
	Log    *slog.Logger

	mu      sync.Mutex
	flights map[string]*flight
}

type flight struct {
	done chan struct{}
	res  api.ImageDeriveResult
	err  error
}

// Ensure returns the derived image of the repository at p.Path (its root or
// its .banger/image.toml), building it when no image of its key exists.
func (s *Service) Ensure(ctx context.Context, p api.ImageDeriveParams, progress io.Writer) (api.ImageDeriveResult, error) {
	if progress == nil {
		progress = io.Discard
	}
	root, err := repoRoot(p.Path)
	if err != nil {
		return api.ImageDeriveResult{}, err
	}
	spec, err := imagespec.Load(root)
	if err != nil {
		return api.ImageDeriveResult{}, errdefs.BadRequestf("%v", err)
	}
	base := spec.Base
	if base == "" {
		base = s.Config.DefaultImage
	}
	if err := s.Images.Known(ctx, base); err != nil {
		return api.ImageDeriveResult{}, fmt.Errorf("%s: base %q: %w", spec.File, base, err)
	}
	res, err := s.Images.Resolve(ctx, base, progress)
	if err != nil {
		return api.ImageDeriveResult{}, err
	}
	key := spec.Key(baseIdentity(base, res))
	name := imageName(root, key)

	// One build per key at a time; the others wait for it.
	s.mu.Lock()
	if f := s.flights[name]; f != nil {
		s.mu.Unlock()
		fmt.Fprintf(progress, "waiting for the build of %s in progress ...\n", name)
		select {
		case <-f.done:
			r := f.res
			r.Built = false
			return r, f.err
		case <-ctx.Done():
			return api.ImageDeriveResult{}, ctx.Err()
		}
	}
	if im, ok := s.Images.FindDerived(ctx, name, key); ok {
		s.mu.Unlock()
		fmt.Fprintf(progress, "image %s is up to date (key %s)\n", name, key)
		return api.ImageDeriveResult{Image: im, Key: key, File: spec.File}, nil
	}
	if s.flights == nil {
		s.flights = map[string]*flight{}
	}
	f := &flight{done: make(chan struct{})}
	s.flights[name] = f
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.flights, name)
		s.mu.Unlock()
		close(f.done)
	}()
	f.res, f.err = s.build(ctx, spec, base, res, key, name, progress)
	return f.res, f.err
}

// build runs the spec in a throwaway VM of base and registers the result.
func (s *Service) build(ctx context.Context, spec *imagespec.Spec, base string, res image.Resolved, key, name string, progress io.Writer) (api.ImageDeriveResult, error) {
	log := logging.From(ctx)
	start := time.Now()
	dir := filepath.Join(s.Layout.CacheDir, "derive")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return api.ImageDeriveResult{}, err
	}
	seed := filepath.Join(dir, key+".seed.tar")
	if err := writeSeed(seed, spec, s.Config.Derive.AptSources); err != nil {
		return api.ImageDeriveResult{}, fmt.Errorf("%s: %w", spec.File, err)
	}
	defer os.Remove(seed)
	logPath := filepath.Join(dir, name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		return api.ImageDeriveResult{}, err
	}
	defer lf.Close()
	// The script's output goes to the log; its stage lines also to the
	// caller's progress. The guest decides how much it writes: both are
	// capped (the build itself is bounded by BuildTimeout).
	out := io.MultiWriter(&headLog{w: lf, left: maxBuildLog}, &stageLines{w: progress, left: maxStageLines})

	fmt.Fprintf(progress, "building image %s from %s on %s (in a build VM; log %s) ...\n", name, spec.File, base, logPath)
	// A build VM of this key left by a daemon that died mid-build is ours:
	// builds of one key run one at a time.
	vmName := "build-" + key[:8]
	if err := s.VMs.Delete(ctx, vmName); err == nil {
		log.Info("removed a build VM left by an interrupted build", "vm", vmName)
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		return api.ImageDeriveResult{}, fmt.Errorf("build VM %s left by an interrupted build: %w", vmName, err)
	}
	bvm, err := s.VMs.CreateSeeded(ctx, api.VMCreateParams{Name: vmName, Image: base, NAT: true}, seed, progress)
	if err != nil {
		return api.ImageDeriveResult{}, fmt.Errorf("build VM for %s: %w", name, err)
	}
	defer func() {
		// The build VM never outlives the build (a fresh context: a
		// cancelled build still removes it).
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := s.VMs.Delete(dctx, bvm.Name); err != nil {
			log.Warn("build VM not deleted", "vm", bvm.Name, "error", err)
		}
	}()
	bctx, cancel := context.WithTimeout(ctx, BuildTimeout)
	defer cancel()
	code, err := s.VMs.Exec(bctx, bvm.Name, []string{"sh", "/root/.banger-build/build.sh"}, out, out)
	if err != nil {
		return api.ImageDeriveResult{}, fmt.Errorf("build of %s: %w (log: %s)", name, err, logPath)
	}
	if code != 0 {
		return api.ImageDeriveResult{}, errdefs.BadRequestf("build of %s from %s failed (exit %d); its log is %s:\n%s", name, spec.File, code, logPath, lastLines(logPath, 12))
	}
	fmt.Fprintf(progress, "stopping the build VM ...\n")
	if _, err := s.VMs.Stop(ctx, bvm.Name); err != nil {
		return api.ImageDeriveResult{}, fmt.Errorf("build of %s: stop the build VM: %w", name, err)
	}
	rootfs, err := s.VMs.TakeRootfs(ctx, bvm.Name)
	if err != nil {
		return api.ImageDeriveResult{}, fmt.Errorf("build of %s: %w", name, err)
	}
	im, err := s.Images.RegisterDerived(ctx, image.DerivedParams{Name: name, Key: key, Base: res, BaseName: base, File: spec.File, Rootfs: rootfs})
	if err != nil {
		return api.ImageDeriveResult{}, err
	}
	secs := time.Since(start).Seconds()
	fmt.Fprintf(progress, "built image %s in %.1fs\n", name, secs)
	log.Info("derived image built", "image", name, "base", base, "key", key, "seconds", secs)
	return api.ImageDeriveResult{Image: im, Key: key, File: spec.File, Built: true, Seconds: secs, Log: logPath}, nil
}

// writeSeed writes the build VM's /root: the script and the files.
func writeSeed(path string, spec *imagespec.Spec, sources []string) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if err := spec.Seed(f, sources); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// baseIdentity names the exact base a key is built on: its name, its
// record and its root filesystem's size and modification time (a rebuilt
// or re-pulled base gives a new key).
func baseIdentity(name string, res image.Resolved) string {
	id := fmt.Sprintf("%s %s %s", name, res.Image.ID, res.Kernel.ID)
	if fi, err := os.Stat(res.Image.Rootfs); err == nil {
		id += fmt.Sprintf(" %d %d", fi.Size(), fi.ModTime().UnixNano())
	}
	return id
}

// repoRoot accepts the repository's root or its .banger/image.toml.
func repoRoot(p string) (string, error) {
	if p == "" {
		return "", errdefs.BadRequestf("no repository given")
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	if filepath.Base(abs) == filepath.Base(imagespec.File) && filepath.Base(filepath.Dir(abs)) == filepath.Dir(imagespec.File) {
		return filepath.Dir(filepath.Dir(abs)), nil
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", errdefs.BadRequestf("%s: %v", p, err)
	}
	if !fi.IsDir() {
		return "", errdefs.BadRequestf("%s is neither a repository nor its %s", p, imagespec.File)
	}
	return abs, nil
}

var unsafeName = regexp.MustCompile(`[^a-z0-9-]+`)

// imageName is <repository directory>-<first 8 of key>, as an image name.
func imageName(root, key string) string {
	n := strings.Trim(unsafeName.ReplaceAllString(strings.ToLower(filepath.Base(root)), "-"), "-")
	if len(n) > 40 {
		n = strings.TrimRight(n[:40], "-")
	}
	if n == "" {
		n = "repo"
	}
	return n + "-" + key[:8]
}

// Caps on what a build VM's output costs the host.
const (
	maxBuildLog   = 64 << 20 // bytes of build log kept
	maxStageLines = 1000     // stage lines passed on as progress
)

// headLog keeps the first left bytes written to it and notes, once, that
// the rest was dropped; it never fails the build.
type headLog struct {
	w       io.Writer
	left    int64
	dropped bool
}

func (h *headLog) Write(p []byte) (int, error) {
	if h.left <= 0 {
		if !h.dropped {
			h.dropped = true
			fmt.Fprintf(h.w, "\n[banger: the build log is cut at %d MiB]\n", maxBuildLog>>20)
		}
		return len(p), nil
	}
	q := p
	if int64(len(q)) > h.left {
		q = q[:h.left]
	}
	n, err := h.w.Write(q)
	h.left -= int64(n)
	if err != nil {
		return n, err
	}
	return len(p), nil
}

// stageLines passes on the "banger-build: ..." lines written to it, at
// most left of them.
type stageLines struct {
	w    io.Writer
	buf  []byte
	left int
}

func (s *stageLines) Write(p []byte) (int, error) {
	s.buf = append(s.buf, p...)
	for {
		i := strings.IndexByte(string(s.buf), '\n')
		if i < 0 {
			if len(s.buf) > 64<<10 {
				s.buf = s.buf[:0]
			}
			return len(p), nil
		}
		line := string(s.buf[:i])
		s.buf = s.buf[i+1:]
		if strings.HasPrefix(line, "banger-build: ") && s.left > 0 {
			s.left--
			fmt.Fprintln(s.w, line)
		}
	}
}

// lastLines returns the last n lines of a file (see sysexec.LastLines).
func lastLines(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return sysexec.LastLines(string(b), n)
}
