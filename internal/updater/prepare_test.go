package updater

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/testutil"
)

// TestUpdateStagesOnlyWhereOnlyRootWrites is [P7] item 2: the update used to
// stage in /var/cache/banger/updates, a directory the owner owns, where an
// owner process could swap the staged binaries between verification and
// install. It now refuses any work dir another uid could change, and
// stages in a fresh root-only one.
func TestUpdateStagesOnlyWhereOnlyRootWrites(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	base := rootOnlyBase(t)
	// The old place: a cache the owner owns.
	owned := filepath.Join(base, "cache-banger")
	os.MkdirAll(owned, 0o700)
	os.Chown(owned, 4247, 4247)
	if _, err := workDir(filepath.Join(owned, "updates")); err == nil || !strings.Contains(err.Error(), "owned by uid 4247") {
		t.Fatalf("an update work dir inside the owner's cache was accepted: %v", err)
	}
	rootOnly := filepath.Join(base, "cache-root")
	w, err := workDir(rootOnly)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(w)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 || filepath.Dir(w) != rootOnly {
		t.Fatalf("work dir %s: %v %v", w, fi, err)
	}
	// Another uid cannot replace the stage inside it.
	if err := os.Chmod(w, 0o700); err != nil {
		t.Fatal(err)
	}
	w2, _ := workDir(rootOnly)
	if w2 == w {
		t.Fatal("two updates share one work dir")
	}
}

// rootOnlyBase is a fresh directory under the temp dir that only root can
// change (t.TempDir's parent is not).
func rootOnlyBase(t *testing.T) string {
	t.Helper()
	base, err := os.MkdirTemp("", "bgupd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	return base
}

func TestSanityCheck(t *testing.T) {
	staged := map[string]string{"banger": "/stage/banger", "bangerd": "/stage/bangerd"}
	for _, tc := range []struct {
		name, version string
		migrations    error
		want          string // "" = accepted
	}{
		{"current database", "v2", nil, ""},
		{"migrations needed", "v2", exitStatus(1), ""},
		{"other version", "v3", nil, `staged banger reports "banger v2 (c2)", not v3`},
		{"incompatible database", "v2", exitStatus(2), "staged bangerd refuses this database: schema 9 is newer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &fakeHost{root: "/", fail: map[string][]error{}, out: map[string]string{
				"run stage/banger --version":                    "banger v2 (c2)\n",
				"run stage/bangerd --check-migrations --system": "schema 9 is newer\n",
			}}
			if tc.migrations != nil {
				h.fail["run stage/bangerd --check-migrations --system"] = []error{tc.migrations}
			}
			err := sanityCheck(context.Background(), h, staged, tc.version)
			if (tc.want == "" && err != nil) || (tc.want != "" && (err == nil || err.Error() != tc.want)) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	h := &fakeHost{root: "/", fail: map[string][]error{"run stage/banger --version": {errors.New("exec format error")}}}
	if err := sanityCheck(context.Background(), h, staged, "v2"); err == nil || err.Error() != "staged banger --version failed: exec format error" {
		t.Fatalf("err = %v", err)
	}
	if !slices.Equal(h.calls, []string{"run stage/banger --version"}) {
		t.Fatalf("calls %q", h.calls)
	}
}

// TestPrepare: a signed release is downloaded, staged root-only, run once,
// and the stage is removed with the work dir; a tarball that does not match
// the signed hash leaves nothing behind.
func TestPrepare(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (the work dir must be root's alone)")
	}
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	tarball, err := os.ReadFile(writeTarball(t, []entry{reg("banger", "cli"), reg("bangerd", "daemon"), reg("banger-vmm", "vmm"), reg("banger-agent", "agent")}))
	if err != nil {
		t.Fatal(err)
	}
	serve := func(body []byte) Release {
		sums := []byte(sha(tarball) + "  " + TarballName("v2.0.0") + "\n")
		sig := k.Sign(t, sums)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/SHA256SUMS":
				w.Write(sums)
			case "/SHA256SUMS.sig":
				w.Write(sig)
			case "/t.tar.gz":
				w.Write(body)
			default:
				http.NotFound(w, r)
			}
		}))
		t.Cleanup(srv.Close)
		return Release{Version: "v2.0.0", TarballURL: srv.URL + "/t.tar.gz", SHA256SumsURL: srv.URL + "/SHA256SUMS", SignatureURL: srv.URL + "/SHA256SUMS.sig"}
	}
	root := filepath.Join(rootOnlyBase(t), "cache")
	h := &fakeHost{root: "/", fail: map[string][]error{}, out: map[string]string{}}
	h.hook = func(call string) {
		if strings.HasSuffix(call, "/banger --version") {
			h.out[call] = "banger v2.0.0 (c)\n"
		}
	}
	rel := serve(tarball)
	var out bytes.Buffer
	s, err := Prepare(context.Background(), nil, rel, k.PubPEM, root, h, &out)
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != "downloading "+rel.TarballURL+"\n" || len(s.Binaries) != len(ReleaseBinaries) || filepath.Dir(s.Dir) != root {
		t.Fatalf("staged %+v, output %q", s, out.String())
	}
	if b, err := os.ReadFile(s.Binaries["bangerd"]); err != nil || string(b) != "daemon" || !strings.HasPrefix(s.Binaries["bangerd"], s.Dir+"/") {
		t.Fatalf("staged bangerd %s: %q %v", s.Binaries["bangerd"], b, err)
	}
	if len(h.calls) != 2 || !strings.HasSuffix(h.calls[1], "/bangerd --check-migrations --system") {
		t.Fatalf("calls %q", h.calls)
	}
	if err := s.Remove(); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(root); len(left) != 0 {
		t.Fatalf("left in %s after Remove: %v", root, left)
	}
	bad := append(bytes.Clone(tarball), 0)
	if _, err := Prepare(context.Background(), nil, serve(bad), k.PubPEM, root, h, &out); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("tampered tarball: err = %v", err)
	}
	if left, _ := os.ReadDir(root); len(left) != 0 {
		t.Fatalf("left in %s after a refused download: %v", root, left)
	}
}
