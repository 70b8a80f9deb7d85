package release_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/catalog"
	"github.com/banger-dev/banger/internal/release"
)

// catalogMain runs `banger-release catalog ...` in-process.
func catalogMain(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = release.Main(context.Background(), append([]string{"catalog"}, args...), &o, &e)
	return code, o.String(), e.String()
}

func fromDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func readIndex(t *testing.T, tree string) *catalog.Index {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(tree, catalog.IndexFile))
	if err != nil {
		t.Fatal(err)
	}
	ix, err := catalog.ParseIndex(data)
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

// TestCatalogEndToEnd: the catalog subcommand builds a two-entry image
// index, re-publishes one entry, and the result verifies with openssl and
// pulls with the catalog client.
func TestCatalogEndToEnd(t *testing.T) {
	needOpenSSL(t)
	keys := t.TempDir()
	key := filepath.Join(keys, "key.pem")
	mainOK(t, "--keygen", key)
	pubPath := release.PubPathFor(key)
	pub, _ := os.ReadFile(pubPath)
	tree := filepath.Join(t.TempDir(), "images")

	publish := func(name, version, rootfs string, extra ...string) []string {
		t.Helper()
		from := fromDir(t, map[string]string{"rootfs.ext4": rootfs})
		args := append([]string{"--kind", "image", "--name", name, "--out", tree, "--key", key, "--from", from,
			"--version", version, "--verify-pub", pubPath}, extra...)
		code, stdout, stderr := catalogMain(args...)
		if code != 0 {
			t.Fatalf("catalog %s: exit %d: %s", strings.Join(args, " "), code, stderr)
		}
		return strings.Fields(stdout)
	}
	first := publish("debian-12", "1", "debian rootfs v1", "--kernel", "linux-6.1", "--description", "Debian 12 (bookworm)")
	publish("alpine", "3.20", "alpine rootfs", "--distro", "alpine")
	ix := readIndex(t, tree)
	if got := ix.Names(); !slices.Equal(got, []string{"alpine", "debian-12"}) || ix.Kind != catalog.KindImage {
		t.Fatalf("index %s entries %v", ix.Kind, got)
	}
	old, _ := ix.Find("debian-12")
	if old.Kernel != "linux-6.1" || old.Description != "Debian 12 (bookworm)" || old.Distro != "debian" || old.Arch != "amd64" {
		t.Fatalf("entry %+v", old)
	}
	if len(first) != 3 || first[0] != filepath.Join(tree, old.SHA256+".tar.zst") {
		t.Fatalf("stdout %q", first)
	}

	// Re-publish: the entry is replaced, not added; the old bundle stays.
	publish("debian-12", "2", "debian rootfs v2")
	ix = readIndex(t, tree)
	cur, _ := ix.Find("debian-12")
	if len(ix.Entries) != 2 || cur.Version != "2" || cur.SHA256 == old.SHA256 || cur.Kernel != "" {
		t.Fatalf("after re-publish: %+v", ix.Entries)
	}
	if _, err := os.Stat(filepath.Join(tree, old.Bundle)); err != nil {
		t.Errorf("old bundle removed: %v", err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(tree, ".*")); len(leftovers) != 0 {
		t.Errorf("temporary files left in the tree: %v", leftovers)
	}

	// openssl verifies the signature too.
	sigB64, _ := os.ReadFile(filepath.Join(tree, "index.json.sig"))
	der, err := base64.StdEncoding.DecodeString(string(sigB64))
	if err != nil {
		t.Fatal(err)
	}
	derPath := filepath.Join(t.TempDir(), "sig.der")
	if err := os.WriteFile(derPath, der, 0o644); err != nil {
		t.Fatal(err)
	}
	v, err := exec.Command("openssl", "dgst", "-sha256", "-verify", pubPath, "-signature", derPath,
		filepath.Join(tree, "index.json")).CombinedOutput()
	if err != nil || strings.TrimSpace(string(v)) != "Verified OK" {
		t.Fatalf("openssl verify: %q %v", v, err)
	}

	// The client fetches and pulls both entries.
	srv := httptest.NewServer(http.FileServer(http.Dir(tree)))
	defer srv.Close()
	c := &catalog.Client{HTTP: srv.Client(), PublicKeyPEM: pub}
	fix, err := c.FetchIndex(context.Background(), srv.URL+"/index.json", catalog.KindImage)
	if err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	for name, want := range map[string]string{"debian-12": "debian rootfs v2", "alpine": "alpine rootfs"} {
		e, _ := fix.Find(name)
		dir, err := c.Pull(context.Background(), fix, e, dest, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(filepath.Join(dir, "rootfs.ext4")); string(got) != want {
			t.Errorf("%s rootfs %q, want %q", name, got, want)
		}
	}

	// A kernel catalog, with modules and the version read from vmlinux.
	ktree := t.TempDir()
	kfrom := fromDir(t, map[string]string{"vmlinux": "\x7fELF Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org) #1",
		"initrd.img": "initrd", "modules/6.1.0-18-amd64/modules.dep": "", "config": "ignored"})
	if code, _, stderr := catalogMain("--kind", "kernel", "--name", "linux-6.1", "--out", ktree, "--key", key, "--from", kfrom); code != 0 {
		t.Fatalf("kernel: exit %d: %s", code, stderr)
	}
	kix := readIndex(t, ktree)
	if e, ok := kix.Find("linux-6.1"); !ok || e.KernelVersion != "6.1.0-18-amd64" || kix.Kind != catalog.KindKernel {
		t.Fatalf("kernel index %+v", kix)
	}
}

func TestCatalogRefusals(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	key, other := filepath.Join(dir, "key.pem"), filepath.Join(dir, "other.pem")
	for _, k := range []string{key, other} {
		if _, err := release.Keygen(context.Background(), "", k, ""); err != nil {
			t.Fatal(err)
		}
	}
	tree := t.TempDir()
	img := fromDir(t, map[string]string{"rootfs.ext4": "rootfs"})
	base := []string{"--out", tree, "--key", key}
	if code, _, stderr := catalogMain(append(base, "--kind", "image", "--name", "img", "--from", img)...); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	indexBefore, _ := os.ReadFile(filepath.Join(tree, "index.json"))

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"help", []string{"--help"}, 0, "banger-release catalog publishes"},
		{"unknown flag", []string{"--nope"}, 2, "flag provided but not defined"},
		{"stray argument", append(base, "--kind", "image", "--name", "x", "--from", img, "extra"), 2, `unexpected argument "extra"`},
		{"bad kind", append(base, "--kind", "disk", "--name", "x", "--from", img), 1, `--kind "disk"`},
		{"bad name", append(base, "--kind", "image", "--name", "X/y", "--from", img), 1, "not a catalog name"},
		{"no --from", append(base, "--kind", "image", "--name", "x"), 1, "--from is required"},
		{"no rootfs", append(base, "--kind", "image", "--name", "x", "--from", t.TempDir()), 1, "needs rootfs.ext4"},
		{"kind mismatch", append(base, "--kind", "kernel", "--name", "k", "--from", fromDir(t, map[string]string{"vmlinux": "k"})), 1, "is an image catalog"},
		{"--kernel on a kernel", append(base, "--kind", "kernel", "--name", "k", "--kernel", "x", "--from", img), 1, "--kernel applies to images"},
		{"wrong --verify-pub", append(base, "--kind", "image", "--name", "y", "--from", img, "--verify-pub", release.PubPathFor(other)), 1, "signing key and published key differ"},
		{"index signed by another key", []string{"--out", tree, "--key", other, "--kind", "image", "--name", "y", "--from", img}, 1, "does not verify with --key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := catalogMain(tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d (want %d): %s (want %q)", code, tc.code, stderr, tc.want)
			}
			if code == 1 && (strings.Count(stderr, "banger-release catalog: ") != 1 || !strings.HasPrefix(lastLine(stderr), "banger-release catalog: ")) {
				t.Errorf("error is not one last line: %q", stderr)
			}
			if now, _ := os.ReadFile(filepath.Join(tree, "index.json")); !bytes.Equal(now, indexBefore) {
				t.Fatal("a refused publish changed index.json")
			}
		})
	}

	if ents, _ := os.ReadDir(tree); len(ents) != 3 {
		t.Errorf("refused publishes left files: %v", ents)
	}

	// An index edited by hand after signing is not re-signed.
	edited := bytes.Replace(indexBefore, []byte(`"img"`), []byte(`"img2"`), 1)
	if err := os.WriteFile(filepath.Join(tree, "index.json"), edited, 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := catalogMain(append(base, "--kind", "image", "--name", "z", "--from", img)...)
	if code != 1 || !strings.Contains(stderr, "edited by hand") {
		t.Fatalf("edited index: exit %d: %s", code, stderr)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
