package release_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/release"
	"github.com/banger-dev/banger/internal/trust"
	"github.com/banger-dev/banger/internal/updater"
)

func needOpenSSL(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl not found: the release builder signs with it (install the openssl package)")
	}
}

// mainOK runs the banger-release command in-process and fails on a non-zero exit.
func mainOK(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := release.Main(context.Background(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("banger-release %s: exit %d: %s", strings.Join(args, " "), code, stderr.String())
	}
	return stdout.String()
}

func fakeBinaries(t *testing.T, version string) string {
	t.Helper()
	dir := t.TempDir()
	for _, b := range updater.ReleaseBinaries {
		body := "#!/bin/sh\necho " + b + " " + version + "\n"
		if err := os.WriteFile(filepath.Join(dir, b), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestReleaseEndToEnd: --keygen, build a release of prebuilt files, serve
// the tree over HTTP, and take it through the whole verification half of the
// updater; the staged files must equal the inputs.
func TestReleaseEndToEnd(t *testing.T) {
	needOpenSSL(t)
	keys := t.TempDir()
	key := filepath.Join(keys, "key.pem")
	out := mainOK(t, "--keygen", key)
	pubPath := filepath.Join(keys, "key.pub")
	if !strings.Contains(out, pubPath) {
		t.Fatalf("keygen output %q does not name %s", out, pubPath)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode: %v %v", fi, err)
	}
	pub, err := os.ReadFile(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(pub), "-----BEGIN PUBLIC KEY-----") {
		t.Fatalf("key.pub is not PKIX PEM: %q", pub)
	}

	tree := t.TempDir()
	srv := httptest.NewServer(http.FileServer(http.Dir(tree)))
	defer srv.Close()
	base := srv.URL + "/"

	inputs := fakeBinaries(t, "v1.2.3")
	mainOK(t, "--version", "v1.2.3", "--out", tree, "--key", key, "--base-url", base,
		"--prebuilt", inputs, "--latest", "--verify-pub", pubPath)
	// A second release merges into the same manifest without taking latest.
	mainOK(t, "--version", "v1.3.0-rc.1", "--out", tree, "--key", key, "--base-url", base,
		"--prebuilt", fakeBinaries(t, "v1.3.0-rc.1"))

	for _, p := range []string{"manifest.json", "manifest.json.sig", "v1.2.3/banger-v1.2.3-linux-amd64.tar.gz", "v1.2.3/SHA256SUMS", "v1.2.3/SHA256SUMS.sig"} {
		if _, err := os.Stat(filepath.Join(tree, p)); err != nil {
			t.Errorf("release tree: %v", err)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(tree, ".*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary files left in the tree: %v", leftovers)
	}

	ctx := context.Background()
	hc := srv.Client()
	m, err := updater.FetchManifestFrom(ctx, hc, srv.URL+"/manifest.json",
		updater.ManifestCheck{PublicKeyPEM: pub, StatePath: filepath.Join(t.TempDir(), updater.StateFileName), Record: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Versions(); !slices.Equal(got, []string{"v1.2.3", "v1.3.0-rc.1"}) || m.LatestStable != "v1.2.3" {
		t.Fatalf("manifest versions %v latest %q", got, m.LatestStable)
	}
	rel, err := m.Resolve("")
	if err != nil {
		t.Fatal(err)
	}
	sums, err := updater.FetchAndVerifySignatureWithKey(ctx, hc, rel, pub)
	if err != nil {
		t.Fatal(err)
	}
	want, err := rel.TarballSHA256(sums)
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	tarball := filepath.Join(cache, rel.TarballName())
	if err := updater.DownloadVerified(ctx, hc, rel.TarballURL, want, tarball); err != nil {
		t.Fatal(err)
	}
	staged, err := updater.Stage(tarball, filepath.Join(cache, "stage"), updater.ReleaseBinaries)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range updater.ReleaseBinaries {
		in, _ := os.ReadFile(filepath.Join(inputs, b))
		got, err := os.ReadFile(staged[b])
		if err != nil || !bytes.Equal(in, got) {
			t.Errorf("staged %s differs from its input (err %v)", b, err)
		}
		fi, _ := os.Stat(staged[b])
		if fi.Mode().Perm() != 0o755 {
			t.Errorf("staged %s mode %v", b, fi.Mode())
		}
	}
	outB, err := exec.Command(staged["banger"]).Output()
	if err != nil || strings.TrimSpace(string(outB)) != "banger v1.2.3" {
		t.Fatalf("staged banger says %q (%v)", outB, err)
	}

	// The signature file is what openssl verifies, too (cosign format: base64 DER).
	sigB64, _ := os.ReadFile(filepath.Join(tree, "v1.2.3", "SHA256SUMS.sig"))
	der, err := base64.StdEncoding.DecodeString(string(sigB64))
	if err != nil {
		t.Fatal(err)
	}
	derPath := filepath.Join(t.TempDir(), "sig.der")
	if err := os.WriteFile(derPath, der, 0o644); err != nil {
		t.Fatal(err)
	}
	v, err := exec.Command("openssl", "dgst", "-sha256", "-verify", pubPath, "-signature", derPath,
		filepath.Join(tree, "v1.2.3", "SHA256SUMS")).CombinedOutput()
	if err != nil || strings.TrimSpace(string(v)) != "Verified OK" {
		t.Fatalf("openssl verify: %q %v", v, err)
	}

	// A different key refuses the release; versions are never reused.
	other := filepath.Join(t.TempDir(), "other.pem")
	mainOK(t, "--keygen", other)
	otherPub, _ := os.ReadFile(release.PubPathFor(other))
	if _, err := updater.FetchAndVerifySignatureWithKey(ctx, hc, rel, otherPub); !errors.Is(err, trust.ErrBadSignature) {
		t.Fatalf("other key: err = %v", err)
	}
	var stderr bytes.Buffer
	if code := release.Main(ctx, []string{"--version", "v1.2.3", "--out", tree, "--key", key, "--base-url", base, "--prebuilt", inputs},
		&bytes.Buffer{}, &stderr); code != 1 || !strings.Contains(stderr.String(), "never reused") {
		t.Fatalf("reused version: exit %d: %s", code, stderr.String())
	}
}

func TestBuildRefusesWrongVerifyPub(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	key, other := filepath.Join(dir, "key.pem"), filepath.Join(dir, "other.pem")
	for _, k := range []string{key, other} {
		if _, err := release.Keygen(context.Background(), "", k, ""); err != nil {
			t.Fatal(err)
		}
	}
	tree := t.TempDir()
	_, err := release.Build(context.Background(), release.Options{
		Version: "v0.1.0", OutDir: tree, KeyPath: key, BaseURL: "http://127.0.0.1:1/",
		Prebuilt: fakeBinaries(t, "v0.1.0"), VerifyPub: release.PubPathFor(other),
	})
	if err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("err = %v", err)
	}
	ents, _ := os.ReadDir(tree)
	if len(ents) != 0 {
		t.Fatalf("failed build left %d entries in the tree", len(ents))
	}
	// The placeholder as --verify-pub is refused too.
	placeholder := filepath.Join(t.TempDir(), "placeholder.pub")
	if err := os.WriteFile(placeholder, []byte(trust.PlaceholderMarker+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = release.Build(context.Background(), release.Options{
		Version: "v0.1.0", OutDir: tree, KeyPath: key, BaseURL: "http://127.0.0.1:1/",
		Prebuilt: fakeBinaries(t, "v0.1.0"), VerifyPub: placeholder,
	})
	if !errors.Is(err, trust.ErrKeyNotConfigured) {
		t.Fatalf("placeholder --verify-pub: err = %v", err)
	}
}

func TestKeygenRefusesOverwriteAndBadKeys(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "key.pem")
	if _, err := release.Keygen(context.Background(), "", key, ""); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(key)
	if _, err := release.Keygen(context.Background(), "", key, filepath.Join(dir, "new.pub")); err == nil {
		t.Fatal("keygen overwrote an existing key")
	}
	after, _ := os.ReadFile(key)
	if !bytes.Equal(before, after) {
		t.Fatal("existing key changed")
	}
	// A P-384 signing key is refused before anything is built.
	p384 := filepath.Join(dir, "p384.pem")
	if err := exec.Command("openssl", "ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out", p384).Run(); err != nil {
		t.Fatal(err)
	}
	_, err := release.Build(context.Background(), release.Options{
		Version: "v0.1.0", OutDir: t.TempDir(), KeyPath: p384, BaseURL: "http://127.0.0.1:1/", Prebuilt: fakeBinaries(t, "v0.1.0"),
	})
	if !errors.Is(err, trust.ErrBadKey) {
		t.Fatalf("P-384 key: err = %v", err)
	}
}

func TestBuildIsDeterministic(t *testing.T) {
	needOpenSSL(t)
	key := filepath.Join(t.TempDir(), "key.pem")
	if _, err := release.Keygen(context.Background(), "", key, ""); err != nil {
		t.Fatal(err)
	}
	inputs := fakeBinaries(t, "v0.2.0")
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var sums []string
	for range 2 {
		res, err := release.Build(context.Background(), release.Options{
			Version: "v0.2.0", OutDir: t.TempDir(), KeyPath: key, BaseURL: "http://127.0.0.1:1/x/", Prebuilt: inputs, BuiltAt: at,
		})
		if err != nil {
			t.Fatal(err)
		}
		sums = append(sums, res.TarballSHA256)
		if res.Release.TarballURL != "http://127.0.0.1:1/x/v0.2.0/banger-v0.2.0-linux-amd64.tar.gz" || res.Release.PublishedAt != "2026-01-02T03:04:05Z" {
			t.Fatalf("release entry %+v", res.Release)
		}
	}
	if sums[0] != sums[1] {
		t.Fatalf("same inputs, different tarballs: %v", sums)
	}
}

func TestMainUsageErrors(t *testing.T) {
	cases := [][]string{
		{"--version", "1.2.3", "--out", "x", "--key", "k", "--base-url", "http://h/"},
		{"--keygen", "k.pem", "--version", "v1.0.0"},
		{"--pub", "x.pub", "--version", "v1.0.0"},
		{"stray"},
		{"--no-such-flag"},
	}
	for _, args := range cases {
		var stderr bytes.Buffer
		if code := release.Main(context.Background(), args, &bytes.Buffer{}, &stderr); code == 0 {
			t.Errorf("%v: exit 0", args)
		} else if strings.Count(strings.TrimSpace(stderr.String()), "\n") > 0 && code != 2 {
			t.Errorf("%v: error not one line: %q", args, stderr.String())
		}
	}
	bad := release.Options{Version: "v1.0.0", OutDir: t.TempDir(), KeyPath: "/nonexistent", BaseURL: "http://h/"}
	if _, err := release.Build(context.Background(), bad); err == nil {
		t.Error("missing key accepted")
	}
	key := filepath.Join(t.TempDir(), "k")
	os.WriteFile(key, nil, 0o600)
	for _, o := range []release.Options{
		{Version: "v1.0.0", OutDir: t.TempDir(), KeyPath: key, BaseURL: "ftp://h/"},
		{Version: "v1.0.0+meta", OutDir: t.TempDir(), KeyPath: key, BaseURL: "http://h/"},
		{Version: "v1.0.0", OutDir: t.TempDir(), KeyPath: key, BaseURL: "http://h/", Binaries: []string{"a/b"}},
		{Version: "v1.0.0", OutDir: t.TempDir(), KeyPath: key, BaseURL: "http://h/", Prebuilt: "x", Cover: true},
	} {
		if _, err := release.Build(context.Background(), o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

func TestBuildArgs(t *testing.T) {
	at := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)
	got := release.BuildArgs("v1.2.3", "abc", at, true, "/o/banger", "banger")
	want := []string{"build", "-trimpath", "-buildvcs=false", "-cover", "-ldflags",
		"-X github.com/banger-dev/banger/internal/buildinfo.Version=v1.2.3 -X github.com/banger-dev/banger/internal/buildinfo.Commit=abc -X github.com/banger-dev/banger/internal/buildinfo.BuiltAt=2026-11-25T20:00:00Z -X github.com/banger-dev/banger/internal/agent.Version=v1.2.3",
		"-o", "/o/banger", "./cmd/banger"}
	if !slices.Equal(got, want) {
		t.Fatalf("BuildArgs =\n%q\nwant\n%q", got, want)
	}
}

// TestBuildFromSource builds a tiny module laid out like banger (same module
// path, internal/buildinfo, cmd/<name>) and checks the stamped build tuple
// in the staged binary.
func TestBuildFromSource(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go build")
	}
	needOpenSSL(t)
	repo := t.TempDir()
	goVer := strings.TrimPrefix(runtime.Version(), "go")
	if parts := strings.SplitN(goVer, ".", 3); len(parts) >= 2 {
		goVer = parts[0] + "." + parts[1]
	}
	files := map[string]string{
		"go.mod":                         "module github.com/banger-dev/banger\n\ngo " + goVer + "\n",
		"internal/buildinfo/b.go":        "package buildinfo\n\nvar (\n\tVersion = \"dev\"\n\tCommit  = \"unknown\"\n\tBuiltAt = \"unknown\"\n)\n",
		"cmd/hello/main.go":              "package main\n\nimport (\n\t\"fmt\"\n\n\t\"github.com/banger-dev/banger/internal/buildinfo\"\n)\n\nfunc main() { fmt.Println(buildinfo.Version, buildinfo.Commit, buildinfo.BuiltAt) }\n",
		"cmd/hello-too/main.go":          "package main\n\nfunc main() {}\n",
		"internal/unused/placeholder.go": "package unused\n",
	}
	for p, body := range files {
		full := filepath.Join(repo, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	key := filepath.Join(t.TempDir(), "key.pem")
	if _, err := release.Keygen(context.Background(), "", key, ""); err != nil {
		t.Fatal(err)
	}
	tree := t.TempDir()
	at := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)
	res, err := release.Build(context.Background(), release.Options{
		Version: "v0.0.1-test", OutDir: tree, KeyPath: key, BaseURL: "http://127.0.0.1:1/",
		Commit: "abc1234def", Binaries: []string{"hello", "hello-too"}, RepoDir: repo, BuiltAt: at, Latest: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	staged, err := updater.Stage(res.TarballPath, filepath.Join(t.TempDir(), "stage"), []string{"hello", "hello-too"})
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(staged["hello"]).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "v0.0.1-test abc1234def 2026-11-25T20:00:00Z" {
		t.Fatalf("built binary says %q", got)
	}
	var m updater.Manifest
	data, _ := os.ReadFile(res.ManifestPath)
	if err := json.Unmarshal(data, &m); err != nil || m.LatestStable != "v0.0.1-test" || m.SchemaVersion != 1 {
		t.Fatalf("manifest %s (%v)", data, err)
	}
}
