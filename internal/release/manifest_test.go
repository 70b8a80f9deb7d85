package release_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/release"
	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/internal/updater"
)

// TestManifestSignedWithExpiry: what banger-release writes is a manifest
// the updater accepts only with its signature, until it expires; `banger-
// release manifest` re-signs it (the old copy then counts as a replay);
// openssl verifies manifest.json.sig like SHA256SUMS.sig.
func TestManifestSignedWithExpiry(t *testing.T) {
	needOpenSSL(t)
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	tree := t.TempDir()
	srv := httptest.NewServer(http.FileServer(http.Dir(tree)))
	defer srv.Close()
	ctx := context.Background()
	issued := time.Now().UTC().Add(-20 * 24 * time.Hour).Truncate(time.Second)
	res, err := release.Build(ctx, release.Options{
		Version: "v1.0.0", OutDir: tree, KeyPath: k.Priv, BaseURL: srv.URL + "/", Prebuilt: fakeBinaries(t, "v1.0.0"),
		Latest: true, VerifyPub: k.Pub, ManifestIssued: issued, ManifestExpiresIn: 21 * 24 * time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.ManifestSigPath != filepath.Join(tree, "manifest.json.sig") {
		t.Fatalf("manifest signature at %q", res.ManifestSigPath)
	}
	sig, _ := os.ReadFile(res.ManifestSigPath)
	data, _ := os.ReadFile(res.ManifestPath)
	der := filepath.Join(t.TempDir(), "sig.der")
	os.WriteFile(der, decodeB64(t, sig), 0o644)
	if out := testutil.OpenSSL(t, "dgst", "-sha256", "-verify", k.Pub, "-signature", der, res.ManifestPath); strings.TrimSpace(string(out)) != "Verified OK" {
		t.Fatalf("openssl: %s", out)
	}
	state := filepath.Join(t.TempDir(), updater.StateFileName)
	mc := updater.ManifestCheck{PublicKeyPEM: k.PubPEM, StatePath: state, Record: true}
	m, err := updater.FetchManifestFrom(ctx, srv.Client(), srv.URL+"/manifest.json", mc)
	if err != nil {
		t.Fatal(err)
	}
	if m.Issued != issued.Format(time.RFC3339) || m.Expires != issued.Add(21*24*time.Hour).Format(time.RFC3339) {
		t.Fatalf("issued %s expires %s", m.Issued, m.Expires)
	}
	// Two days on it has expired.
	late := mc
	late.Now = time.Now().Add(48 * time.Hour)
	if _, err := updater.FetchManifestFrom(ctx, srv.Client(), srv.URL+"/manifest.json", late); !errors.Is(err, updater.ErrManifestExpired) {
		t.Fatalf("after expiry: err = %v", err)
	}
	// Re-signing (the CLI, defaults: now, 30 days) makes it valid again.
	var stdout, stderr bytes.Buffer
	if code := release.Main(ctx, []string{"manifest", "--out", tree, "--key", k.Priv, "--verify-pub", k.Pub}, &stdout, &stderr); code != 0 {
		t.Fatalf("banger-release manifest: exit %d: %s", code, stderr.String())
	}
	m2, err := updater.FetchManifestFrom(ctx, srv.Client(), srv.URL+"/manifest.json", late)
	if err != nil {
		t.Fatalf("re-signed manifest: %v", err)
	}
	if m2.LatestStable != "v1.0.0" || len(m2.Releases) != 1 || m2.Issued == m.Issued {
		t.Fatalf("re-signed manifest %+v", m2)
	}
	// The first copy, replayed by a mirror, is now refused.
	os.WriteFile(res.ManifestPath, data, 0o644)
	os.WriteFile(res.ManifestSigPath, sig, 0o644)
	if _, err := updater.FetchManifestFrom(ctx, srv.Client(), srv.URL+"/manifest.json", mc); !errors.Is(err, updater.ErrManifestReplay) {
		t.Fatalf("replayed first manifest: err = %v", err)
	}
}

// TestManifestNotSilentlyResigned: a manifest.json edited by hand (its .sig
// no longer verifies) is neither merged into nor re-signed; a clock behind
// the last issued time is refused; --expires-in is bounded.
func TestManifestNotSilentlyResigned(t *testing.T) {
	needOpenSSL(t)
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	tree := t.TempDir()
	ctx := context.Background()
	if _, err := release.Build(ctx, release.Options{Version: "v1.0.0", OutDir: tree, KeyPath: k.Priv,
		BaseURL: "http://127.0.0.1:1/", Prebuilt: fakeBinaries(t, "v1.0.0"), Latest: true}); err != nil {
		t.Fatal(err)
	}
	manPath := filepath.Join(tree, "manifest.json")
	good, _ := os.ReadFile(manPath)
	os.WriteFile(manPath, bytes.Replace(good, []byte(`"latest_stable": "v1.0.0"`), []byte(`"latest_stable": ""`), 1), 0o644)
	_, err := release.Build(ctx, release.Options{Version: "v1.1.0", OutDir: tree, KeyPath: k.Priv,
		BaseURL: "http://127.0.0.1:1/", Prebuilt: fakeBinaries(t, "v1.1.0")})
	if err == nil || !strings.Contains(err.Error(), "changed by hand") {
		t.Fatalf("merge into a hand-edited manifest: err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(tree, "v1.1.0")); err == nil {
		t.Fatal("v1.1.0 was published")
	}
	if _, err := release.ResignManifest(ctx, release.ManifestOptions{OutDir: tree, KeyPath: k.Priv}); err == nil || !strings.Contains(err.Error(), "changed by hand") {
		t.Fatalf("re-sign of a hand-edited manifest: err = %v", err)
	}
	os.WriteFile(manPath, good, 0o644)
	if _, err := release.ResignManifest(ctx, release.ManifestOptions{OutDir: tree, KeyPath: k.Priv, Issued: time.Now().Add(-time.Hour)}); err == nil || !strings.Contains(err.Error(), "clock") {
		t.Fatalf("re-sign with a clock behind the last issue: err = %v", err)
	}
	for _, bad := range []string{"0d", "-1h", "400d", "soon", "30"} {
		if _, err := release.ParseExpiry(bad); err == nil {
			t.Errorf("--expires-in %q accepted", bad)
		}
	}
	if d, err := release.ParseExpiry("7d"); err != nil || d != 7*24*time.Hour {
		t.Errorf("7d = %v, %v", d, err)
	}
	var stderr bytes.Buffer
	if code := release.Main(ctx, []string{"manifest", "--out", tree, "--key", k.Priv, "--expires-in", "400d"}, &bytes.Buffer{}, &stderr); code != 2 {
		t.Errorf("--expires-in 400d: exit %d: %s", code, stderr.String())
	}
}

func decodeB64(t *testing.T, b []byte) []byte {
	t.Helper()
	der, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return der
}
