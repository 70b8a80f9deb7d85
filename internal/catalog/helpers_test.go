package catalog_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"github.com/banger-dev/banger/internal/testutil"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/banger-dev/banger/internal/catalog"
)

// server serves dir over HTTP, counts requests per path, and lets a test
// replace the handler of one path.
type server struct {
	*httptest.Server
	dir string

	mu     sync.Mutex
	counts map[string]int
	hooks  map[string]http.HandlerFunc
}

func newServer(t *testing.T, dir string) *server {
	t.Helper()
	s := &server{dir: dir, counts: map[string]int{}, hooks: map[string]http.HandlerFunc{}}
	files := http.FileServer(http.Dir(dir))
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.counts[r.URL.Path]++
		hook := s.hooks[r.URL.Path]
		s.mu.Unlock()
		if hook != nil {
			hook(w, r)
			return
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *server) count(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[path]
}

// bundleRequests counts requests for any .tar.zst.
func (s *server) bundleRequests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for p, c := range s.counts {
		if strings.HasSuffix(p, catalog.BundleExt) {
			n += c
		}
	}
	return n
}

func (s *server) hook(path string, h http.HandlerFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hooks[path] = h
}

func (s *server) indexURL() string { return s.URL + "/" + catalog.IndexFile }

// client is a catalog client trusting k, using the test server's transport.
func (s *server) client(k testutil.OpenSSLKey) *catalog.Client {
	return &catalog.Client{HTTP: s.Client(), PublicKeyPEM: k.PubPEM}
}

// tarEnt is one hand-made tar entry.
type tarEnt struct {
	name     string
	typ      byte
	body     string
	linkname string
}

func reg(name, body string) tarEnt { return tarEnt{name: name, typ: tar.TypeReg, body: body} }
func dir(name string) tarEnt       { return tarEnt{name: name, typ: tar.TypeDir} }
func symlink(name, target string) tarEnt {
	return tarEnt{name: name, typ: tar.TypeSymlink, linkname: target}
}

func manifestJSON(kind catalog.Kind, name, version string) string {
	b, _ := json.Marshal(catalog.Manifest{Schema: 1, Kind: kind, Name: name, Version: version,
		CreatedAt: "2026-01-02T03:04:05Z"})
	return string(b)
}

// handBundle writes a zstd tar of ents into dir under its content address
// and returns an index entry for it.
func handBundle(t *testing.T, dir string, name, version string, ents []tarEnt) catalog.Entry {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, e := range ents {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.linkname, Mode: 0o644,
			Size: int64(len(e.body)), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("tar header %q: %v", e.name, err)
		}
		if hdr.Size > 0 {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	zw, _ := zstd.NewWriter(nil)
	data := zw.EncodeAll(raw.Bytes(), nil)
	return putBundle(t, dir, name, version, data)
}

// putBundle stores data as a bundle in dir and returns its entry.
func putBundle(t *testing.T, dir, name, version string, data []byte) catalog.Entry {
	t.Helper()
	sum := sha256.Sum256(data)
	hexSum := hex.EncodeToString(sum[:])
	if err := os.WriteFile(filepath.Join(dir, catalog.BundleFileName(hexSum)), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return catalog.Entry{Name: name, Version: version, Distro: "debian", Arch: "amd64",
		Bundle: catalog.BundleFileName(hexSum), SHA256: hexSum, Size: int64(len(data))}
}

// signIndex writes dir/index.json for entries and signs it with k.
func signIndex(t *testing.T, dir string, k testutil.OpenSSLKey, kind catalog.Kind, entries ...catalog.Entry) []byte {
	t.Helper()
	ix := catalog.Index{Schema: 1, Kind: kind, GeneratedAt: "2026-01-02T03:04:05Z", Entries: entries}
	if ix.Entries == nil {
		ix.Entries = []catalog.Entry{}
	}
	data, err := json.MarshalIndent(ix, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	writeSigned(t, dir, k, data)
	return data
}

func writeSigned(t *testing.T, dir string, k testutil.OpenSSLKey, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, catalog.IndexFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, catalog.IndexFile+catalog.SignatureSuffix), k.Sign(t, data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// assertClean checks that destRoot holds nothing but an empty .staging (or
// does not exist at all).
func assertClean(t *testing.T, destRoot string) {
	t.Helper()
	ents, err := os.ReadDir(destRoot)
	if os.IsNotExist(err) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() != catalog.StagingDir {
			t.Errorf("%s holds %q after a refused pull", destRoot, e.Name())
			continue
		}
		st, err := os.ReadDir(filepath.Join(destRoot, e.Name()))
		if err != nil || len(st) != 0 {
			t.Errorf("%s/.staging is not empty after a refused pull: %v %v", destRoot, st, err)
		}
	}
}
