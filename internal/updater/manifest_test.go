package updater

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/internal/trust"
)

// serveSigned serves body at every path and k's signature of it at every
// path ending in ".sig" (manifest.json and manifest.json.sig).
func serveSigned(t *testing.T, k testutil.OpenSSLKey, body string) *httptest.Server {
	t.Helper()
	sig := k.Sign(t, []byte(body))
	srv := httptest.NewServer(signedHandler(body, sig))
	t.Cleanup(srv.Close)
	return srv
}

func signedHandler(body string, sig []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ManifestSignatureSuffix) {
			w.Write(sig)
			return
		}
		fmt.Fprint(w, body)
	})
}

// manifestJSON is a manifest issued an hour ago that expires in a day.
func manifestJSON(base string, schema int, latest string, versions ...string) string {
	now := time.Now().UTC()
	return manifestAt(now.Add(-time.Hour), now.Add(24*time.Hour), base, schema, latest, versions...)
}

func manifestAt(issued, expires time.Time, base string, schema int, latest string, versions ...string) string {
	var rels []string
	for _, v := range versions {
		rels = append(rels, fmt.Sprintf(`{"version":%q,"tarball_url":"%s/%s/t.tar.gz","sha256sums_url":"%s/%s/SHA256SUMS","signature_url":"%s/%s/SHA256SUMS.sig","published_at":"2026-01-01T00:00:00Z"}`,
			v, base, v, base, v, base, v))
	}
	return fmt.Sprintf(`{"schema_version":%d,"issued":%q,"expires":%q,"latest_stable":%q,"releases":[%s]}`, schema,
		issued.UTC().Format(time.RFC3339), expires.UTC().Format(time.RFC3339), latest, strings.Join(rels, ","))
}

func TestFetchManifestGood(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	srv := serveSigned(t, k, manifestJSON("http://127.0.0.1:1", 1, "v1.1.0", "v1.0.0", "v1.1.0", "v1.2.0-rc.1"))
	m, err := FetchManifestFrom(context.Background(), srv.Client(), srv.URL+"/manifest.json", ManifestCheck{PublicKeyPEM: k.PubPEM})
	if err != nil {
		t.Fatal(err)
	}
	if m.SchemaVersion != 1 || m.LatestStable != "v1.1.0" || len(m.Releases) != 3 {
		t.Fatalf("manifest = %+v", m)
	}
	r, err := m.Resolve("")
	if err != nil || r.Version != "v1.1.0" || r.SignatureURL != "http://127.0.0.1:1/v1.1.0/SHA256SUMS.sig" {
		t.Fatalf("Resolve(\"\") = %+v, %v", r, err)
	}
	r, err = m.Resolve("v1.2.0-rc.1")
	if err != nil || r.Version != "v1.2.0-rc.1" {
		t.Fatalf("Resolve(rc) = %+v, %v", r, err)
	}
	if r.TarballName() != "banger-v1.2.0-rc.1-linux-amd64.tar.gz" {
		t.Fatalf("TarballName = %s", r.TarballName())
	}
}

func TestResolveUnknownVersion(t *testing.T) {
	m, err := ParseManifest([]byte(manifestJSON("http://h", 1, "v1.1.0", "v1.0.0", "v1.1.0")))
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Resolve("v9.9.9")
	if !errors.Is(err, ErrUnknownVersion) {
		t.Fatalf("err = %v", err)
	}
	for _, want := range []string{"v9.9.9", "v1.0.0", "v1.1.0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	m.LatestStable = ""
	if _, err := m.Resolve(""); !errors.Is(err, ErrUnknownVersion) {
		t.Fatalf("no latest_stable: err = %v", err)
	}
}

func TestUnknownSchemaVersionRefused(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	for _, schema := range []int{0, 2, 99} {
		srv := serveSigned(t, k, manifestJSON("http://h", schema, "v1.0.0", "v1.0.0"))
		_, err := FetchManifestFrom(context.Background(), srv.Client(), srv.URL, ManifestCheck{PublicKeyPEM: k.PubPEM})
		if !errors.Is(err, ErrUnknownSchema) {
			t.Fatalf("schema %d: err = %v, want ErrUnknownSchema", schema, err)
		}
		if !strings.Contains(err.Error(), fmt.Sprint(schema)) {
			t.Errorf("message %q does not name the schema", err)
		}
	}
}

func TestBadManifestRefused(t *testing.T) {
	cases := map[string]string{
		"not JSON":          `<html>hello</html>`,
		"truncated":         `{"schema_version":1,"latest_stable":"v1.0.0","releases":[`,
		"no schema":         `{"latest_stable":"","releases":[]}`,
		"schema string":     `{"schema_version":"1","releases":[]}`,
		"trailing data":     `{"schema_version":1,"latest_stable":"","releases":[]} {"x":1}`,
		"duplicate version": manifestJSON("http://h", 1, "v1.0.0", "v1.0.0", "v1.0.0"),
		"latest not listed": manifestJSON("http://h", 1, "v2.0.0", "v1.0.0"),
		"path in version":   manifestJSON("http://h", 1, "", "../../etc"),
		"empty version":     manifestJSON("http://h", 1, "", ""),
		"file URL":          manifestJSON("file://", 1, "v1.0.0", "v1.0.0"),
		"relative URL":      strings.ReplaceAll(manifestJSON("http://h", 1, "v1.0.0", "v1.0.0"), "http://h/", ""),
		"credentials":       manifestJSON("http://u:p@h", 1, "v1.0.0", "v1.0.0"),
		"no tarball URL":    `{"schema_version":1,"latest_stable":"","releases":[{"version":"v1.0.0","sha256sums_url":"http://h/s","signature_url":"http://h/g"}]}`,
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := ParseManifest([]byte(body))
			if !errors.Is(err, ErrBadManifest) {
				t.Fatalf("err = %v, want ErrBadManifest", err)
			}
		})
	}
	// A manifest may leave signature_url empty; FetchAndVerifySignature refuses it.
	body := `{"schema_version":1,"latest_stable":"v1.0.0","future_field":true,"releases":[{"version":"v1.0.0","tarball_url":"http://h/t","sha256sums_url":"http://h/s","signature_url":""}]}`
	if _, err := ParseManifest([]byte(body)); err != nil {
		t.Fatalf("manifest with an empty signature URL and an unknown field: %v", err)
	}
}

func TestHTTPSManifestWithHTTPURLsRefused(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	body := manifestJSON("http://127.0.0.1:1", 1, "v1.0.0", "v1.0.0")
	var h atomic.Value
	h.Store(signedHandler(body, k.Sign(t, []byte(body))))
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.Load().(http.Handler).ServeHTTP(w, r) }))
	defer srv.Close()
	mc := ManifestCheck{PublicKeyPEM: k.PubPEM}
	_, err := FetchManifestFrom(context.Background(), srv.Client(), srv.URL+"/manifest.json", mc)
	if !errors.Is(err, ErrBadManifest) || !strings.Contains(err.Error(), "non-https") {
		t.Fatalf("err = %v", err)
	}
	body = manifestJSON("https://127.0.0.1:1", 1, "v1.0.0", "v1.0.0")
	h.Store(signedHandler(body, k.Sign(t, []byte(body))))
	if _, err := FetchManifestFrom(context.Background(), srv.Client(), srv.URL+"/manifest.json", mc); err != nil {
		t.Fatalf("https manifest with https URLs: %v", err)
	}
}

// TestOversizeManifestRefused serves a body over the cap with a
// Content-Length (refused before reading) and streamed without one (refused
// after cap+1 bytes). In both cases the server must not get to write it all.
func TestOversizeManifestRefused(t *testing.T) {
	const total = 256 << 20 // far beyond what socket buffers can absorb
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	for _, withLength := range []bool{true, false} {
		t.Run(fmt.Sprintf("content-length=%v", withLength), func(t *testing.T) {
			var written atomic.Int64
			done := make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				defer close(done)
				if withLength {
					w.Header().Set("Content-Length", fmt.Sprint(total))
				}
				chunk := []byte(strings.Repeat(" ", 32<<10))
				w.Write([]byte(`{"schema_version":1,"pad":"`))
				for written.Load() < total {
					n, err := w.Write(chunk)
					written.Add(int64(n))
					if err != nil {
						return
					}
				}
			}))
			defer srv.Close()
			_, err := FetchManifestFrom(context.Background(), srv.Client(), srv.URL, ManifestCheck{PublicKeyPEM: k.PubPEM})
			if !errors.Is(err, trust.ErrTooLarge) {
				t.Fatalf("err = %v, want ErrTooLarge", err)
			}
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("server still writing 30s after the client gave up")
			}
			t.Logf("server wrote %d bytes before the client hung up", written.Load())
			if w := written.Load(); w >= total/2 {
				t.Fatalf("server wrote %d of %d bytes: the client read the oversize body", w, total)
			}
		})
	}
}

func TestFetchManifestHTTPErrors(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	mc := ManifestCheck{PublicKeyPEM: k.PubPEM}
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	_, err := FetchManifestFrom(context.Background(), srv.Client(), srv.URL+"/manifest.json", mc)
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("err = %v", err)
	}
	if _, err := FetchManifestFrom(context.Background(), nil, "ftp://example.com/m.json", mc); !errors.Is(err, ErrBadManifest) {
		t.Fatalf("ftp URL: err = %v", err)
	}
}

func TestDefaultManifestURLIsHTTPS(t *testing.T) {
	if !strings.HasPrefix(DefaultManifestURL, "https://") {
		t.Fatalf("DefaultManifestURL %q must be https", DefaultManifestURL)
	}
}

func TestCaps(t *testing.T) {
	if MaxManifestBytes != 1<<20 || MaxSumsBytes != 64<<10 || MaxSignatureBytes != 4<<10 || MaxTarballBytes != 512<<20 {
		t.Fatalf("caps changed: %d %d %d %d", MaxManifestBytes, MaxSumsBytes, MaxSignatureBytes, MaxTarballBytes)
	}
}
