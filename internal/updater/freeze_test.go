package updater

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/internal/trust"
)

// mirror is a release mirror over real HTTP: /manifest.json and
// /manifest.json.sig, whatever bytes the test puts there, with request counts.
type mirror struct {
	srv           *httptest.Server
	manifest, sig atomic.Value // []byte; a nil sig is a 404
}

func newMirror(t *testing.T) *mirror {
	t.Helper()
	m := &mirror{}
	m.manifest.Store([]byte(nil))
	m.sig.Store([]byte(nil))
	m.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b []byte
		switch r.URL.Path {
		case "/manifest.json":
			b = m.manifest.Load().([]byte)
		case "/manifest.json.sig":
			b = m.sig.Load().([]byte)
		}
		if b == nil {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	}))
	t.Cleanup(m.srv.Close)
	return m
}

// serve publishes manifest with sig (nil: no signature file).
func (m *mirror) serve(manifest string, sig []byte) {
	m.manifest.Store([]byte(manifest))
	m.sig.Store(sig)
}

func (m *mirror) fetch(c ManifestCheck) (*Manifest, error) {
	return FetchManifestFrom(context.Background(), m.srv.Client(), m.srv.URL+"/manifest.json", c)
}

func oneLine(t *testing.T, err error) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), "\n") {
		t.Errorf("error is not one line: %q", err)
	}
}

// TestSignedManifestAccepted: a manifest signed by openssl the way
// banger-release signs it verifies, and its issued/expires are kept.
func TestSignedManifestAccepted(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	mi := newMirror(t)
	body := manifestJSON("http://h", 1, "v1.1.0", "v1.0.0", "v1.1.0", "v1.2.0-rc.1")
	mi.serve(body, k.Sign(t, []byte(body)))
	m, err := mi.fetch(ManifestCheck{PublicKeyPEM: k.PubPEM, StatePath: filepath.Join(t.TempDir(), StateFileName), Record: true})
	if err != nil {
		t.Fatal(err)
	}
	if m.LatestStable != "v1.1.0" || m.Issued == "" || m.Expires == "" || m.HighestVersion() != "v1.2.0-rc.1" {
		t.Fatalf("manifest %+v, highest %q", m, m.HighestVersion())
	}
}

// TestUnsignedManifestRefused: no manifest.json.sig, and a signed manifest
// without issued/expires, are both refused; so is any manifest while the
// key is the placeholder.
func TestUnsignedManifestRefused(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	mi := newMirror(t)
	body := manifestJSON("http://h", 1, "v1.0.0", "v1.0.0")
	mi.serve(body, nil)
	_, err := mi.fetch(ManifestCheck{PublicKeyPEM: k.PubPEM})
	if !errors.Is(err, ErrSignatureRequired) || !strings.Contains(err.Error(), "unsigned manifest") {
		t.Fatalf("no signature: err = %v", err)
	}
	oneLine(t, err)
	// Signed, but undated (what an older banger-release wrote, signed by hand).
	undated := `{"schema_version":1,"latest_stable":"v1.0.0","releases":[{"version":"v1.0.0","tarball_url":"http://h/t","sha256sums_url":"http://h/s","signature_url":"http://h/g"}]}`
	mi.serve(undated, k.Sign(t, []byte(undated)))
	if _, err := mi.fetch(ManifestCheck{PublicKeyPEM: k.PubPEM}); !errors.Is(err, ErrBadManifest) || !strings.Contains(err.Error(), "no issued or expires") {
		t.Fatalf("undated: err = %v", err)
	}
	// The embedded placeholder key verifies nothing.
	if trust.IsPlaceholderKey(trust.ReleasePublicKey()) {
		mi.serve(body, k.Sign(t, []byte(body)))
		if _, err := mi.fetch(ManifestCheck{}); !errors.Is(err, trust.ErrKeyNotConfigured) {
			t.Fatalf("placeholder key: err = %v", err)
		}
	}
}

// TestTamperedManifestRefused: a changed byte, another key's signature, a
// malformed signature, and the signature checked before the manifest is
// parsed (a tampered manifest that is not even JSON is a signature error).
func TestTamperedManifestRefused(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	mi := newMirror(t)
	body := manifestJSON("http://h", 1, "v1.0.0", "v1.0.0", "v1.1.0")
	sig := k.Sign(t, []byte(body))
	mc := ManifestCheck{PublicKeyPEM: k.PubPEM}

	tampered := strings.Replace(body, `"latest_stable":"v1.0.0"`, `"latest_stable":"v1.1.0"`, 1)
	mi.serve(tampered, sig)
	_, err := mi.fetch(mc)
	if !errors.Is(err, trust.ErrBadSignature) || !strings.Contains(err.Error(), "release manifest does not verify") {
		t.Fatalf("tampered: err = %v", err)
	}
	oneLine(t, err)
	mi.serve(`{"schema_version":`, sig)
	if _, err := mi.fetch(mc); !errors.Is(err, trust.ErrBadSignature) {
		t.Fatalf("tampered non-JSON: err = %v (the signature must be checked before parsing)", err)
	}
	mi.serve(body, testutil.NewOpenSSLKey(t, "prime256v1").Sign(t, []byte(body)))
	if _, err := mi.fetch(mc); !errors.Is(err, trust.ErrBadSignature) {
		t.Fatalf("other key: err = %v", err)
	}
	mi.serve(body, []byte("not a signature"))
	if _, err := mi.fetch(mc); !errors.Is(err, trust.ErrMalformedSignature) {
		t.Fatalf("malformed signature: err = %v", err)
	}
	mi.serve(body, sig)
	if _, err := mi.fetch(mc); err != nil {
		t.Fatalf("the untampered manifest: %v", err)
	}
}

// TestExpiredManifestRefused: a correctly signed manifest past its expires
// is refused, with the times in the message.
func TestExpiredManifestRefused(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	mi := newMirror(t)
	now := time.Now().UTC()
	body := manifestAt(now.Add(-31*24*time.Hour), now.Add(-time.Hour), "http://h", 1, "v1.0.0", "v1.0.0")
	mi.serve(body, k.Sign(t, []byte(body)))
	state := filepath.Join(t.TempDir(), StateFileName)
	_, err := mi.fetch(ManifestCheck{PublicKeyPEM: k.PubPEM, StatePath: state, Record: true})
	if !errors.Is(err, ErrManifestExpired) || !strings.Contains(err.Error(), "expired at "+now.Add(-time.Hour).Format(time.RFC3339)) {
		t.Fatalf("err = %v", err)
	}
	oneLine(t, err)
	if _, err := os.Lstat(state); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused manifest was recorded (%v)", err)
	}
	// The same manifest judged before its expiry is fine: only time refuses it.
	if _, err := mi.fetch(ManifestCheck{PublicKeyPEM: k.PubPEM, Now: now.Add(-2 * time.Hour)}); err != nil {
		t.Fatalf("before expiry: %v", err)
	}
}

// TestReplayedOlderManifestRefused: once a manifest is recorded, an older
// signed one (earlier issued, or a lower highest version) is refused; --check
// (Record false) reads the state but never writes it; another key has its
// own record.
func TestReplayedOlderManifestRefused(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	mi := newMirror(t)
	state := filepath.Join(t.TempDir(), StateFileName)
	now := time.Now().UTC().Truncate(time.Second)
	old := manifestAt(now.Add(-48*time.Hour), now.Add(24*time.Hour), "http://h", 1, "v1.0.0", "v1.0.0")
	cur := manifestAt(now.Add(-time.Hour), now.Add(24*time.Hour), "http://h", 1, "v1.1.0", "v1.0.0", "v1.1.0")
	check := ManifestCheck{PublicKeyPEM: k.PubPEM, StatePath: state}
	record := check
	record.Record = true

	// --check does not record: the old manifest is still acceptable after.
	mi.serve(cur, k.Sign(t, []byte(cur)))
	if _, err := mi.fetch(check); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(state); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("--check wrote the state (%v)", err)
	}
	if _, err := mi.fetch(record); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(state)
	if err != nil || fi.Mode().Perm() != 0o644 || !fi.Mode().IsRegular() {
		t.Fatalf("state file: %v %v", fi, err)
	}
	// The same manifest again is fine.
	if _, err := mi.fetch(record); err != nil {
		t.Fatalf("same manifest again: %v", err)
	}

	// Replay of the older manifest: refused, whether checking or updating.
	mi.serve(old, k.Sign(t, []byte(old)))
	for _, c := range []ManifestCheck{check, record} {
		_, err := mi.fetch(c)
		if !errors.Is(err, ErrManifestReplay) || !strings.Contains(err.Error(), "older than one this host already accepted") {
			t.Fatalf("replayed older manifest (record=%v): err = %v", c.Record, err)
		}
		oneLine(t, err)
	}
	// Newly issued, but missing the newest release: refused too.
	hiding := manifestAt(now, now.Add(24*time.Hour), "http://h", 1, "v1.0.0", "v1.0.0")
	mi.serve(hiding, k.Sign(t, []byte(hiding)))
	if _, err := mi.fetch(record); !errors.Is(err, ErrManifestReplay) || !strings.Contains(err.Error(), "(v1.0.0) is older than v1.1.0") {
		t.Fatalf("manifest hiding v1.1.0: err = %v", err)
	}
	// A newer manifest moves the record forward; the previous one is then old.
	next := manifestAt(now.Add(time.Minute), now.Add(24*time.Hour), "http://h", 1, "v1.2.0", "v1.0.0", "v1.1.0", "v1.2.0")
	mi.serve(next, k.Sign(t, []byte(next)))
	if _, err := mi.fetch(record); err != nil {
		t.Fatal(err)
	}
	mi.serve(cur, k.Sign(t, []byte(cur)))
	if _, err := mi.fetch(check); !errors.Is(err, ErrManifestReplay) {
		t.Fatalf("previous manifest after a newer one: err = %v", err)
	}
	var st updateState
	b, _ := os.ReadFile(state)
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	fp, _ := trust.KeyFingerprint(k.PubPEM)
	if got := st.Keys[fp]; got.HighestVersion != "v1.2.0" || got.Issued != now.Add(time.Minute).Format(time.RFC3339) {
		t.Fatalf("state %s", b)
	}
	// Another key (a test key, a rotated key) keeps its own record.
	k2 := testutil.NewOpenSSLKey(t, "prime256v1")
	mi.serve(old, k2.Sign(t, []byte(old)))
	if _, err := mi.fetch(ManifestCheck{PublicKeyPEM: k2.PubPEM, StatePath: state, Record: true}); err != nil {
		t.Fatalf("another key's first manifest: %v", err)
	}
}

// TestUpdateStateTrusted: a state file or directory another user could
// have written is refused, never trusted or written through.
func TestUpdateStateTrusted(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	mi := newMirror(t)
	body := manifestJSON("http://h", 1, "v1.0.0", "v1.0.0")
	mi.serve(body, k.Sign(t, []byte(body)))

	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, StateFileName)
	mc := ManifestCheck{PublicKeyPEM: k.PubPEM, StatePath: state, Record: true}

	// A group-writable state file.
	if err := os.WriteFile(state, []byte(`{"schema":1,"keys":{}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(state, 0o664)
	if _, err := mi.fetch(mc); !errors.Is(err, ErrState) {
		t.Fatalf("group-writable state: err = %v", err)
	}
	// A symlink in its place.
	os.Remove(state)
	target := filepath.Join(t.TempDir(), "elsewhere")
	os.WriteFile(target, []byte(`{"schema":1,"keys":{}}`), 0o644)
	if err := os.Symlink(target, state); err != nil {
		t.Fatal(err)
	}
	if _, err := mi.fetch(mc); !errors.Is(err, ErrState) {
		t.Fatalf("symlinked state: err = %v", err)
	}
	os.Remove(state)
	// Garbage.
	os.WriteFile(state, []byte("garbage"), 0o644)
	if _, err := mi.fetch(mc); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt state: err = %v", err)
	}
	os.Remove(state)
	// A directory others can write: nothing is written there.
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := mi.fetch(mc); !errors.Is(err, ErrState) {
		t.Fatalf("world-writable directory: err = %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("wrote into a world-writable directory: %v", ents)
	}
	os.Chmod(dir, 0o755)
	if _, err := mi.fetch(mc); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("state dir holds %v (a temporary file left behind?)", ents)
	}
}

// TestHighestVersion orders semver versions only.
func TestHighestVersion(t *testing.T) {
	m, err := ParseManifest([]byte(manifestJSON("http://h", 1, "", "v1.2.0", "v1.10.0-rc.1", "v0.smoke.0", "v1.9.9")))
	if err != nil {
		t.Fatal(err)
	}
	if h := m.HighestVersion(); h != "v1.10.0-rc.1" {
		t.Fatalf("highest %q", h)
	}
	m, _ = ParseManifest([]byte(manifestJSON("http://h", 1, "", "v0.smoke.0")))
	if h := m.HighestVersion(); h != "" {
		t.Fatalf("highest of test versions %q", h)
	}
	// issued/expires must be RFC 3339, expires after issued.
	for _, bad := range []string{
		strings.Replace(manifestJSON("http://h", 1, "", "v1.0.0"), `"issued":"`, `"issued":"x`, 1),
		manifestAt(time.Now(), time.Now().Add(-time.Hour), "http://h", 1, "", "v1.0.0"),
	} {
		if _, err := ParseManifest([]byte(bad)); !errors.Is(err, ErrBadManifest) {
			t.Errorf("%s: err = %v", bad, err)
		}
	}
}
