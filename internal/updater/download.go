package updater

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"strings"

	"github.com/banger-dev/banger/internal/trust"
)

// DownloadVerified streams rawURL into destPath+".partial" while hashing it,
// under MaxTarballBytes, and renames it to destPath only if its SHA-256 is
// wantSHA256. On any failure the partial file is deleted and nothing is left
// at destPath (a file already there is removed first). The file is 0600.
func DownloadVerified(ctx context.Context, hc *http.Client, rawURL, wantSHA256, destPath string) (err error) {
	want := strings.ToLower(strings.TrimSpace(wantSHA256))
	if !isHexSHA256(want) {
		return fmt.Errorf("download %s: expected sha256 %q is not 64 hex digits", rawURL, wantSHA256)
	}
	if err := checkHTTPURL(rawURL); err != nil {
		return fmt.Errorf("download: %v", err)
	}
	if destPath == "" {
		return fmt.Errorf("download %s: empty destination path", rawURL)
	}
	partial := destPath + ".partial"
	for _, p := range []string{destPath, partial} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("download %s: clear %s: %w", rawURL, p, err)
		}
	}

	resp, err := get(ctx, hc, rawURL, "tarball")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.ContentLength > MaxTarballBytes {
		return trust.Refuse(trust.ErrTooLarge, "tarball at %s is %d bytes, over the %d-byte cap", rawURL, resp.ContentLength, MaxTarballBytes)
	}

	f, err := os.OpenFile(partial, os.O_WRONLY|os.O_CREATE|os.O_EXCL|nofollow, 0o600)
	if err != nil {
		return fmt.Errorf("download %s: %w", rawURL, err)
	}
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil {
			os.Remove(partial)
		}
	}()

	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(resp.Body, MaxTarballBytes+1))
	if err != nil {
		return fmt.Errorf("download %s: %w", rawURL, err)
	}
	if n > MaxTarballBytes {
		return trust.Refuse(trust.ErrTooLarge, "tarball at %s is over the %d-byte cap", rawURL, MaxTarballBytes)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return fmt.Errorf("download %s: got %d bytes, Content-Length said %d", rawURL, n, resp.ContentLength)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return trust.Refuse(ErrHashMismatch, "%s does not match the signed SHA256SUMS: sha256 %s, want %s", rawURL, got, want)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("download %s: sync: %w", rawURL, err)
	}
	cerr := f.Close()
	f = nil
	if err = cerr; err != nil {
		return fmt.Errorf("download %s: close: %w", rawURL, err)
	}
	if err = os.Rename(partial, destPath); err != nil {
		return fmt.Errorf("download %s: %w", rawURL, err)
	}
	return nil
}
