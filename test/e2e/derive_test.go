package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

// TestDerivedImage: a repository's .banger/image.toml adding a Debian
// package, a file and a step gets them in its guest (built in a build VM
// that fetches from an offline mirror inside the test's namespaces); a
// second run reuses the image without building; an invalid file is refused
// with file, line and key before any VM exists.
func TestDerivedImage(t *testing.T) {
	v := newDevboxEnv(t)
	mirror := startDebianMirror(t, v, "sqlite3")
	cfg := fmt.Sprintf("default_image = \"debian-bookworm\"\nstart = \"cold\"\n\n[derive]\napt_sources = [%q]\n", mirror)
	if err := os.WriteFile(v.configFile(), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	repo := writeRepo(t, filepath.Join(v.home, "Data Tool"), map[string]string{
		".banger/image.toml": "# the repository's image\nbase = \"debian-bookworm\"\npackages = [\"sqlite3\"]\n" +
			"run = [\"echo \\\"derived: it's built\\\" > /etc/banger-derived\"]\n\n" +
			"[[copy]]\nsrc = \"conf/greeting\"\ndst = \"/etc/greeting\"\nmode = \"0640\"\n",
		"conf/greeting": "hello from the repository\n",
		"Makefile":      "test:\n\tsqlite3 :memory: 'select 6*7;'\n",
	})
	probe := []string{"sh", "-c", "make -s test; cat /etc/banger-derived /etc/greeting; stat -c %a /etc/greeting"}

	t0 := time.Now()
	r := v.banger(append([]string{"vm", "run", "--rm", repo, "--"}, probe...)...)
	first := time.Since(t0)
	t.Logf("first vm run (build + boot + command): exit %d in %v\nstderr:\n%s", r.code, first, tail(r.stderr, 2000))
	if r.code != 0 || !strings.Contains(r.stdout, "42") || !strings.Contains(r.stdout, "derived: it's built") ||
		!strings.Contains(r.stdout, "hello from the repository") || !strings.Contains(r.stdout, "640") {
		t.Fatalf("derived image run: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, tail(r.stderr, 3000))
	}
	derived := derivedImages(t, v)
	if len(derived) != 1 || !strings.HasPrefix(derived[0].Name, "data-tool-") || !strings.Contains(derived[0].Source, "derived from debian-bookworm by ") {
		t.Fatalf("derived images after the first run: %+v", derived)
	}
	if vms := strings.TrimSpace(v.must("vm", "list", "--json")); vms != "[]" {
		t.Fatalf("the build VM or the run's VM was left: %s", vms)
	}

	// The second run reuses the image: no build, same image.
	t1 := time.Now()
	r = v.banger(append([]string{"vm", "run", "--rm", repo, "--"}, probe...)...)
	second := time.Since(t1)
	t.Logf("second vm run (image reused): exit %d in %v (first: %v)", r.code, second, first)
	if r.code != 0 || !strings.Contains(r.stdout, "42") || strings.Contains(r.stderr, "built image") {
		t.Fatalf("second run: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, tail(r.stderr, 3000))
	}
	again := derivedImages(t, v)
	if len(again) != 1 || again[0].ID != derived[0].ID || again[0].CreatedAt != derived[0].CreatedAt {
		t.Fatalf("the second run rebuilt the image: %+v then %+v", derived, again)
	}
	out := v.must("image", "build", "--from", filepath.Join(repo, ".banger", "image.toml"), "--json")
	var im api.Image
	if err := json.Unmarshal([]byte(out), &im); err != nil || im.Name != derived[0].Name {
		t.Fatalf("image build --from: %v %s", err, out)
	}

	// An invalid file: refused with file, line and key; nothing is created.
	bad := writeRepo(t, filepath.Join(v.home, "bad"), map[string]string{
		".banger/image.toml": "base = \"debian-bookworm\"\n\npackages = [\"sqlite3\"]\npackage = [\"typo\"]\n",
	})
	r = v.banger("vm", "run", "--rm", bad, "--", "true")
	if r.code != 2 || !strings.Contains(r.stderr, filepath.Join(".banger", "image.toml")+":4") || !strings.Contains(r.stderr, "package") {
		t.Fatalf("invalid image.toml: exit %d, want 2 naming .banger/image.toml:4 and the key\n%s", r.code, r.stderr)
	}
	if vms := strings.TrimSpace(v.must("vm", "list", "--json")); vms != "[]" {
		t.Fatalf("a refused run left VMs: %s", vms)
	}
	if n := len(derivedImages(t, v)); n != 1 {
		t.Fatalf("a refused run registered an image (%d derived images)", n)
	}
}

// derivedImages lists the registered images built from an image.toml.
func derivedImages(t testing.TB, v *vmEnv) []api.Image {
	t.Helper()
	var ims []api.Image
	if err := json.Unmarshal([]byte(v.must("image", "list", "--json")), &ims); err != nil {
		t.Fatal(err)
	}
	var out []api.Image
	for _, im := range ims {
		if strings.HasPrefix(im.Source, "derived from ") {
			out = append(out, im)
		}
	}
	return out
}
