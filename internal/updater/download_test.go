package updater

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/banger-dev/banger/internal/trust"
)

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// payloadServer serves body at /f, with a Content-Length unless chunked.
func payloadServer(t *testing.T, body []byte, chunked bool) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/f" {
			http.NotFound(w, r)
			return
		}
		if !chunked {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		for off := 0; off < len(body); off += 4096 {
			end := min(off+4096, len(body))
			if _, err := w.Write(body[off:end]); err != nil {
				return
			}
			if chunked {
				w.(http.Flusher).Flush()
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func assertAbsent(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after a failed download (err %v)", p, err)
		}
	}
}

func TestDownloadVerifiedGood(t *testing.T) {
	body := bytes.Repeat([]byte("banger release bytes "), 10000)
	for _, chunked := range []bool{false, true} {
		srv := payloadServer(t, body, chunked)
		dest := filepath.Join(t.TempDir(), "t.tar.gz")
		if err := DownloadVerified(context.Background(), srv.Client(), srv.URL+"/f", sha(body), dest); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(dest)
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("downloaded file differs (err %v)", err)
		}
		assertAbsent(t, dest+".partial")
	}
}

func TestDownloadVerifiedHashMismatch(t *testing.T) {
	body := []byte("the real tarball")
	srv := payloadServer(t, body, false)
	dest := filepath.Join(t.TempDir(), "t.tar.gz")
	// A stale file at dest must not survive a failed download either.
	if err := os.WriteFile(dest, []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := DownloadVerified(context.Background(), srv.Client(), srv.URL+"/f", sha([]byte("something else")), dest)
	if !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("err = %v, want ErrHashMismatch", err)
	}
	assertAbsent(t, dest, dest+".partial")
}

func TestDownloadVerifiedOverCap(t *testing.T) {
	old := MaxTarballBytes
	MaxTarballBytes = 64 << 10
	t.Cleanup(func() { MaxTarballBytes = old })
	body := bytes.Repeat([]byte{'x'}, 256<<10)
	for _, chunked := range []bool{false, true} {
		srv := payloadServer(t, body, chunked)
		dest := filepath.Join(t.TempDir(), "t.tar.gz")
		err := DownloadVerified(context.Background(), srv.Client(), srv.URL+"/f", sha(body), dest)
		if !errors.Is(err, trust.ErrTooLarge) {
			t.Fatalf("chunked=%v: err = %v, want ErrTooLarge", chunked, err)
		}
		assertAbsent(t, dest, dest+".partial")
	}
}

func TestDownloadVerifiedErrors(t *testing.T) {
	body := []byte("x")
	srv := payloadServer(t, body, false)
	dest := filepath.Join(t.TempDir(), "t.tar.gz")
	if err := DownloadVerified(context.Background(), srv.Client(), srv.URL+"/missing", sha(body), dest); err == nil {
		t.Fatal("404 accepted")
	}
	assertAbsent(t, dest, dest+".partial")
	if err := DownloadVerified(context.Background(), srv.Client(), srv.URL+"/f", "abc", dest); err == nil {
		t.Fatal("short expected hash accepted")
	}
	// A body cut short of its Content-Length.
	short := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.Write([]byte("only a little"))
	}))
	defer short.Close()
	if err := DownloadVerified(context.Background(), short.Client(), short.URL, sha(body), dest); err == nil {
		t.Fatal("truncated body accepted")
	}
	assertAbsent(t, dest, dest+".partial")
	// A cancelled context.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := DownloadVerified(ctx, srv.Client(), srv.URL+"/f", sha(body), dest); err == nil {
		t.Fatal("cancelled download succeeded")
	}
	assertAbsent(t, dest, dest+".partial")
}
