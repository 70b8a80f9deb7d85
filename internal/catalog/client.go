package catalog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/trust"
)

// Defaults for the Client's zero values.
const (
	DefaultMaxIndexBytes    = 4 << 20
	DefaultMaxUnpackedBytes = 32 << 30
	DefaultMaxEntries       = 1 << 17
	DefaultStallTimeout     = 2 * time.Minute
	maxSignatureBytes       = 4 << 10
)

// StagingDir is the directory under a destination root that holds bundles
// being unpacked.
const StagingDir = ".staging"

// Client fetches signed indexes and pulls bundles. The zero value is ready
// to use; a Client is safe for concurrent use.
type Client struct {
	// HTTP is the client requests go through; nil means one with connect,
	// TLS and response-header timeouts (and no overall timeout, as a bundle
	// may take long: see StallTimeout).
	HTTP *http.Client
	// PublicKeyPEM is the key the index signature must verify with; nil
	// means trust.ReleasePublicKey().
	PublicKeyPEM []byte
	// KeyName names PublicKeyPEM in errors; "" means "the release key".
	KeyName string
	// MaxIndexBytes caps index.json; 0 means DefaultMaxIndexBytes.
	MaxIndexBytes int64
	// MaxUnpackedBytes caps what one bundle unpacks to (its decompressed
	// tar stream, and its regular-file bytes); 0 means
	// DefaultMaxUnpackedBytes (config: catalog.max_unpacked_size). An entry
	// whose signed unpacked_size is larger is refused before any download;
	// one with an unpacked_size is held to exactly that.
	MaxUnpackedBytes int64
	// MaxEntries caps the tar entries in one bundle; 0 means DefaultMaxEntries.
	MaxEntries int
	// StallTimeout aborts a download that receives no data for this long;
	// 0 means DefaultStallTimeout.
	StallTimeout time.Duration

	flight singleflight.Group
}

var defaultHTTP = &http.Client{
	Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   30 * time.Second,
		ResponseHeaderTimeout: time.Minute,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConns:          10,
		ForceAttemptHTTP2:     true,
	},
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return defaultHTTP
}

func (c *Client) publicKey() []byte {
	if c.PublicKeyPEM != nil {
		return c.PublicKeyPEM
	}
	return trust.ReleasePublicKey()
}

func orDefault[T int | int64 | time.Duration](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

// FetchIndex downloads the index at indexURL and its signature at
// indexURL+".sig", verifies the signature over the exact index bytes with
// the release key before parsing anything, then parses and validates the
// index and checks it is a kind catalog.
func (c *Client) FetchIndex(ctx context.Context, indexURL string, kind Kind) (*Index, error) {
	if _, err := parseIndexURL(indexURL); err != nil {
		return nil, err
	}
	if !kind.Valid() {
		return nil, fmt.Errorf("catalog kind %q is not %q or %q", kind, KindImage, KindKernel)
	}
	data, err := c.getSmall(ctx, indexURL, orDefault(c.MaxIndexBytes, DefaultMaxIndexBytes))
	switch {
	case err == nil:
	case errors.Is(err, trust.ErrTooLarge) || ctx.Err() != nil:
		return nil, trust.RefuseWrap(ErrFetch, err, "catalog %s: %v", indexURL, err)
	default:
		return nil, trust.RefuseWrap(ErrFetch, err, "catalog %s: %v; check the catalog URL and your network", indexURL, err)
	}
	sigURL := indexURL + SignatureSuffix
	sig, err := c.getSmall(ctx, sigURL, maxSignatureBytes)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return nil, trust.RefuseWrap(ErrFetch, err, "catalog %s: %v", indexURL, err)
	default:
		return nil, trust.RefuseWrap(ErrSignature, err, "catalog %s: no signature at %s (%v); a catalog must publish one next to its index; refusing", indexURL, sigURL, err)
	}
	if err := trust.Verify(data, sig, c.publicKey(), "blob"); err != nil {
		switch {
		case errors.Is(err, trust.ErrBadSignature):
			keyName := c.KeyName
			if keyName == "" {
				keyName = "the release key"
			}
			return nil, trust.Refuse(ErrSignature, "catalog %s: signature does not verify with %s (a mirror may have altered it); refusing", indexURL, keyName)
		case errors.Is(err, trust.ErrMalformedSignature):
			return nil, trust.Refuse(ErrSignature, "catalog %s: %s; refusing", indexURL,
				strings.Replace(err.Error(), "signature over blob", "signature "+sigURL, 1))
		default:
			return nil, trust.Refuse(ErrSignature, "catalog %s: cannot verify the index: %v", indexURL, err)
		}
	}
	ix, err := ParseIndex(data)
	if err != nil {
		return nil, trust.RefuseWrap(ErrBadIndex, err, "catalog %s: %v; refusing", indexURL, err)
	}
	if ix.Kind != kind {
		return nil, trust.Refuse(ErrBadIndex, "catalog %s is %s catalog, not %s catalog; check the URL", indexURL, aKind(ix.Kind), aKind(kind))
	}
	ix.URL = indexURL
	return ix, nil
}

// getSmall GETs u into memory, refusing more than max bytes. Its errors
// do not name u: callers do.
func (c *Client) getSmall(ctx context.Context, u string, max int64) ([]byte, error) {
	resp, err := c.get(ctx, u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := trust.ReadCapped(resp, max)
	var big *trust.TooLargeError
	switch {
	case errors.As(err, &big) && big.Size >= 0:
		return nil, trust.Refuse(trust.ErrTooLarge, "%s is %d bytes, more than the cap of %d; refusing", path.Base(resp.Request.URL.Path), big.Size, max)
	case errors.As(err, &big):
		return nil, trust.Refuse(trust.ErrTooLarge, "%s is more than the cap of %d bytes; refusing", path.Base(resp.Request.URL.Path), max)
	case err != nil && ctx.Err() != nil:
		return nil, trust.RefuseWrap(ErrFetch, ctx.Err(), "%v", ctx.Err())
	case err != nil:
		return nil, trust.RefuseWrap(ErrFetch, err, "read: %v", err)
	}
	return data, nil
}

// get GETs u (trust.Get) and returns the response if it is a 200. Its
// errors do not name u (the http package's own may): callers do.
func (c *Client) get(ctx context.Context, u string) (*http.Response, error) {
	resp, err := trust.Get(ctx, c.http(), u, "")
	var status *trust.StatusError
	switch {
	case err == nil:
		return resp, nil
	case errors.As(err, &status):
		return nil, trust.Refuse(ErrFetch, "HTTP %s", status.Status)
	case ctx.Err() != nil:
		return nil, trust.RefuseWrap(ErrFetch, ctx.Err(), "%v", ctx.Err())
	default:
		return nil, trust.RefuseWrap(ErrFetch, err, "%v", err)
	}
}

// aKind is "an image" or "a kernel".
func aKind(k Kind) string {
	if k == KindImage {
		return "an image"
	}
	return "a " + string(k)
}

// Pull downloads e's bundle into destRoot/<name>-<sha256[:12]>/ and returns
// that directory. e must be an entry of ix, exactly as fetched. A directory
// already published there is returned without a download. Otherwise the
// bundle is streamed into destRoot/.staging/<random>/ and renamed into place
// only once its hash, size, entries and manifest all check out; on any
// failure (including ctx being cancelled) the staging directory is removed
// and the final directory is never created.
//
// Concurrent Pulls of the same bundle into the same destRoot through one
// Client share one download; if the caller that started it gives up, the
// others start another. progress, if not nil, is called with the bytes
// received so far and e.Size, at the start, about every MiB and at the end,
// from the goroutine doing the download (not the caller's); a Pull that
// joins another's download gets no progress calls.
func (c *Client) Pull(ctx context.Context, ix *Index, e Entry, destRoot string, progress func(done, total int64)) (string, error) {
	if ix == nil || !slices.Contains(ix.Entries, e) {
		return "", trust.Refuse(ErrNotFound, "catalog entry %q is not in the index it is pulled from; fetch the index again", e.Name)
	}
	if err := ValidateEntry(ix.Kind, e); err != nil {
		return "", err
	}
	bundleURL, err := ResolveBundleURL(ix.URL, e.Bundle)
	if err != nil {
		return "", err
	}
	if destRoot == "" {
		return "", errors.New("catalog pull: no destination directory")
	}
	destRoot = filepath.Clean(destRoot)
	final := filepath.Join(destRoot, DirName(e))
	if ok, err := published(final); err != nil {
		return "", err
	} else if ok {
		return final, nil
	}
	key := destRoot + "\x00" + e.Name + "\x00" + e.SHA256
	for attempt := 0; ; attempt++ {
		// state: 0 not started, 1 this call's download is running, 2 this
		// caller gave up before it started (so it never will).
		var state atomic.Int32
		ch := c.flight.DoChan(key, func() (any, error) {
			if !state.CompareAndSwap(0, 1) {
				return nil, context.Canceled
			}
			return final, c.pull(ctx, ix.Kind, e, bundleURL, destRoot, final, progress)
		})
		var r singleflight.Result
		select {
		case r = <-ch:
		case <-ctx.Done():
			if state.CompareAndSwap(0, 2) {
				return "", ctx.Err() // joined another download, or ours never began
			}
			// Our own download is running under ctx: wait for it to
			// clean up its staging directory before returning.
			if r = <-ch; r.Err != nil {
				return "", r.Err
			}
			return final, nil
		}
		// A shared download that ended because another caller cancelled is
		// retried, not reported: this caller did not cancel.
		if r.Err != nil && r.Shared && ctx.Err() == nil && attempt < 3 &&
			(errors.Is(r.Err, context.Canceled) || errors.Is(r.Err, context.DeadlineExceeded)) {
			continue
		}
		if r.Err != nil {
			return "", r.Err
		}
		return final, nil
	}
}

// published reports whether dir is a published bundle directory.
func published(dir string) (bool, error) {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if fi.IsDir() {
		if mi, err := os.Lstat(filepath.Join(dir, ManifestFile)); err == nil && mi.Mode().IsRegular() {
			return true, nil
		}
	}
	return false, fmt.Errorf("%s exists but is not a pulled bundle (no %s); remove it and pull again", dir, ManifestFile)
}

func (c *Client) pull(ctx context.Context, kind Kind, e Entry, bundleURL, destRoot, final string, progress func(done, total int64)) (err error) {
	if ok, err := published(final); ok || err != nil {
		return err
	}
	stagingRoot := filepath.Join(destRoot, StagingDir)
	if err := os.MkdirAll(stagingRoot, 0o755); err != nil {
		return err
	}
	staging, err := os.MkdirTemp(stagingRoot, e.Name+"-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			if rerr := removeAll(staging); rerr != nil {
				err = fmt.Errorf("%w (and removing %s: %v)", err, staging, rerr)
			}
		}
	}()
	if err := os.Chmod(staging, 0o755); err != nil {
		return err
	}
	if err := c.download(ctx, kind, e, bundleURL, staging, progress); err != nil {
		return err
	}
	if err := syncFS(staging); err != nil {
		return err
	}
	if err := os.Rename(staging, final); err != nil {
		// Another process may have published the same bundle meanwhile.
		if ok, _ := published(final); ok {
			return removeAll(staging)
		}
		return fmt.Errorf("publish %s: %w", final, err)
	}
	return syncDir(destRoot)
}

func (c *Client) download(ctx context.Context, kind Kind, e Entry, bundleURL, staging string, progress func(done, total int64)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stall := orDefault(c.StallTimeout, DefaultStallTimeout)
	var stalled atomic.Bool
	timer := time.AfterFunc(stall, func() { stalled.Store(true); cancel() })
	defer timer.Stop()

	what := fmt.Sprintf("bundle %s (%s)", bundleURL, e.Name)
	// The unpack cap: the size the signed index gives, else the client's
	// cap. Either is enforced while streaming (extractBundle), never after.
	lim := extractLimits{
		maxUnpacked: orDefault(c.MaxUnpackedBytes, DefaultMaxUnpackedBytes),
		maxEntries:  orDefault(c.MaxEntries, DefaultMaxEntries),
	}
	lim.capDesc = "the cap for a bundle whose index gives no unpacked_size (catalog.max_unpacked_size)"
	if e.UnpackedSize > 0 {
		if e.UnpackedSize > lim.maxUnpacked {
			return trust.Refuse(trust.ErrTooLarge, "%s unpacks to %d bytes, more than the cap of %d (catalog.max_unpacked_size); refusing", what, e.UnpackedSize, lim.maxUnpacked)
		}
		lim.maxUnpacked = e.UnpackedSize
		lim.capDesc = "the size the signed index gives (a mirror may have altered the bundle)"
	}
	resp, err := c.get(ctx, bundleURL)
	switch {
	case err == nil:
	case stalled.Load():
		return trust.Refuse(ErrFetch, "%s: no response for %v; retry later", what, stall)
	case ctx.Err() != nil:
		return trust.RefuseWrap(ErrFetch, err, "%s: %v", what, err)
	default:
		return trust.RefuseWrap(ErrFetch, err, "%s: %v; the catalog may have changed since its index was fetched: fetch it again (or check your network)", what, err)
	}
	defer resp.Body.Close()
	if resp.ContentLength > e.Size {
		return trust.Refuse(ErrHashMismatch, "%s: the server sends %d bytes, the signed index says %d (a mirror may have altered it); refusing", what, resp.ContentLength, e.Size)
	}
	body := &bodyReader{r: resp.Body, max: e.Size, h: sha256.New(), progress: progress, total: e.Size,
		touch: func() { timer.Reset(stall) }}
	if progress != nil {
		progress(0, e.Size)
	}
	man, unpacked, xerr := extractBundle(body, kind, staging, lim)
	if xerr == nil {
		// Whatever follows the zstd stream counts towards the hash too.
		_, xerr = io.Copy(io.Discard, body)
		if xerr != nil {
			xerr = streamErr(xerr)
		}
	}
	if berr := body.failure(); berr != nil {
		// A network, size-cap or cancellation error explains any later one.
		switch {
		case stalled.Load():
			return trust.Refuse(ErrFetch, "%s: no data for %v; retry later", what, stall)
		case ctx.Err() != nil:
			return trust.RefuseWrap(ErrFetch, ctx.Err(), "%s: %v", what, ctx.Err())
		case errors.Is(berr, trust.ErrTooLarge):
			return trust.Refuse(ErrHashMismatch, "%s: more than the %d bytes the signed index lists (a mirror may have altered it); refusing", what, e.Size)
		}
		return trust.RefuseWrap(ErrFetch, berr, "%s: read: %v; retry, or check your network", what, berr)
	}
	if xerr != nil {
		// A bundle that fails to unpack may simply have been altered: if
		// the rest of it is there, say so rather than how it broke.
		if errors.Is(xerr, ErrBadBundle) {
			if _, derr := io.Copy(io.Discard, body); derr == nil {
				if body.n != e.Size {
					return trust.Refuse(ErrHashMismatch, "%s: %d bytes, the signed index says %d (a mirror may have altered it); refusing", what, body.n, e.Size)
				}
				if body.sum() != e.SHA256 {
					return trust.Refuse(ErrHashMismatch, "%s: sha256 %s, the signed index says %s (a mirror may have altered it); refusing", what, body.sum(), e.SHA256)
				}
			}
			return trust.RefuseWrap(ErrBadBundle, xerr, "%s: %v; refusing", what, xerr)
		}
		if errors.Is(xerr, trust.ErrTooLarge) {
			// Refused mid-stream: nothing more is read (or written).
			return trust.RefuseWrap(trust.ErrTooLarge, xerr, "%s: %v; refusing", what, xerr)
		}
		return fmt.Errorf("%s: unpack: %w", what, xerr)
	}
	if body.n != e.Size {
		return trust.Refuse(ErrHashMismatch, "%s: %d bytes, the signed index says %d (a mirror may have altered it); refusing", what, body.n, e.Size)
	}
	if got := body.sum(); got != e.SHA256 {
		return trust.Refuse(ErrHashMismatch, "%s: sha256 %s, the signed index says %s (a mirror may have altered it); refusing", what, got, e.SHA256)
	}
	if e.UnpackedSize > 0 && unpacked != e.UnpackedSize {
		return trust.Refuse(ErrBadBundle, "%s: unpacks to %d bytes, the signed index says %d; the catalog is inconsistent, tell its publisher; refusing", what, unpacked, e.UnpackedSize)
	}
	if err := man.matches(kind, e); err != nil {
		return trust.Refuse(ErrBadBundle, "%s: %v; the catalog is inconsistent, tell its publisher; refusing", what, err)
	}
	if progress != nil {
		progress(body.n, e.Size)
	}
	return nil
}

// errBody marks an error that came from reading the HTTP body.
var errBody = errors.New("bundle download failed")

type bodyErr struct{ err error }

func (e *bodyErr) Error() string        { return e.err.Error() }
func (e *bodyErr) Unwrap() error        { return e.err }
func (e *bodyErr) Is(target error) bool { return target == errBody }

// bodyReader hashes and counts what it reads, refuses to read past max, and
// remembers the first read error that is not io.EOF. It is read from one
// goroutine at a time (the zstd decoder runs synchronously).
type bodyReader struct {
	r        io.Reader
	h        hash.Hash
	n, max   int64
	touch    func()
	progress func(done, total int64)
	total    int64
	lastProg int64
	err      error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if err := b.failure(); err != nil {
		return 0, err
	}
	if int64(len(p)) > b.max-b.n+1 {
		p = p[:b.max-b.n+1]
	}
	n, err := b.r.Read(p)
	b.touch()
	if n > 0 {
		b.h.Write(p[:n])
		b.n += int64(n)
		if b.progress != nil && b.n-b.lastProg >= 1<<20 && b.n <= b.max {
			b.lastProg = b.n
			b.progress(b.n, b.total)
		}
	}
	if b.n > b.max {
		return n, b.fail(trust.Refuse(trust.ErrTooLarge, "more than %d bytes", b.max))
	}
	if err != nil && err != io.EOF {
		return n, b.fail(err)
	}
	return n, err
}

func (b *bodyReader) fail(err error) error {
	if b.err == nil {
		b.err = &bodyErr{err}
	}
	return b.err
}

func (b *bodyReader) failure() error { return b.err }

func (b *bodyReader) sum() string { return hex.EncodeToString(b.h.Sum(nil)) }

// removeAll removes a staging tree (its files are 0444 but its directories
// writable, so plain RemoveAll works).
func removeAll(dir string) error { return os.RemoveAll(dir) }

// syncFS flushes the filesystem holding dir, so a published bundle survives
// a crash whole: one syncfs instead of an fsync per module file.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
