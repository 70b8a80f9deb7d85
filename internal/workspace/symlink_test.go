package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/securefs"
)

// tarEntries reads a workspace tar: name → type and content (regular
// files) or target (symlinks), .git included.
func tarEntries(t *testing.T, w *Workspace, o WriteOptions) map[string]string {
	t.Helper()
	var buf bytes.Buffer
	if err := w.WriteTar(context.Background(), &buf, o); err != nil {
		t.Fatalf("WriteTar: %v", err)
	}
	out := map[string]string{}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		switch h.Typeflag {
		case tar.TypeReg:
			b, _ := io.ReadAll(tr)
			out[h.Name] = "file:" + string(b)
		case tar.TypeSymlink:
			out[h.Name] = "symlink:" + h.Linkname
		case tar.TypeDir:
			out[h.Name] = "dir"
		default:
			out[h.Name] = "other"
		}
	}
}

// resolvers runs f with openat2, then with the O_NOFOLLOW component walk
// used where openat2 is missing.
func resolvers(t *testing.T, f func(t *testing.T)) {
	for _, walk := range []bool{false, true} {
		name := "openat2"
		if walk {
			name = "component-walk"
		}
		t.Run(name, func(t *testing.T) {
			if walk {
				defer securefs.ForceComponentWalk()()
			}
			f(t)
		})
	}
}

// symlinkFixture is a real git repository with tracked cfg/config.txt and
// cfg/sub/deep.txt, a tracked symlink, and, outside it, a "secrets"
// directory holding files of the same names (as ~/.ssh would hold id_rsa).
func symlinkFixture(t *testing.T) (repo, secrets string) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	base := t.TempDir()
	repo, secrets = filepath.Join(base, "repo"), filepath.Join(base, "secrets")
	os.MkdirAll(filepath.Join(secrets, "sub"), 0o700)
	os.WriteFile(filepath.Join(secrets, "config.txt"), []byte("SECRET config\n"), 0o600)
	os.WriteFile(filepath.Join(secrets, "sub", "deep.txt"), []byte("SECRET deep\n"), 0o600)
	os.MkdirAll(filepath.Join(repo, "cfg", "sub"), 0o755)
	sh(t, repo, `git init -q -b main && printf 'tracked config\n' > cfg/config.txt && printf 'tracked deep\n' > cfg/sub/deep.txt &&
		printf 'a\n' > a.txt && ln -s a.txt link-to-a && git add -A && git commit -qm one`)
	return repo, secrets
}

// replaceWithSymlink swaps the tracked directory cfg for a symlink to dir.
func replaceWithSymlink(t *testing.T, repo, dir string) {
	t.Helper()
	if err := os.RemoveAll(filepath.Join(repo, "cfg")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dir, filepath.Join(repo, "cfg")); err != nil {
		t.Fatal(err)
	}
}

func assertNoSecrets(t *testing.T, got map[string]string) {
	t.Helper()
	for name, v := range got {
		if strings.Contains(v, "SECRET") {
			t.Errorf("%s was read through the cfg symlink: %q", name, v)
		}
		if strings.HasPrefix(name, "cfg/") {
			t.Errorf("%s is in the stream, below the symlinked cfg", name)
		}
	}
}

// TestSymlinkedParentNotFollowed: a tracked directory replaced by a
// symlink to a directory outside the repository (cfg -> ~/.ssh) is never
// read through, whether it was replaced before Inspect or between Inspect
// and WriteTar: the tracked files below it count as deleted (as git sees
// them), the untracked symlink travels as a symlink only with
// --include-untracked, and a tracked symlink still travels as a symlink.
func TestSymlinkedParentNotFollowed(t *testing.T) {
	resolvers(t, func(t *testing.T) {
		for _, tc := range []struct {
			name string
			o    Options
			wo   WriteOptions
		}{
			{"tracked", Options{}, WriteOptions{}},
			{"guest checkout", Options{}, WriteOptions{GuestCheckout: true}},
			{"include untracked", Options{IncludeUntracked: true}, WriteOptions{}},
			{"full copy", Options{FullCopy: true}, WriteOptions{}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				for _, when := range []string{"before Inspect", "after Inspect"} {
					repo, secrets := symlinkFixture(t)
					if when == "before Inspect" {
						replaceWithSymlink(t, repo, secrets)
					}
					w, err := Inspect(context.Background(), repo, tc.o)
					if err != nil {
						t.Fatal(err)
					}
					if when == "after Inspect" {
						if !slices.Contains(w.Files, "cfg/config.txt") {
							t.Fatalf("%s: files %v", when, w.Files)
						}
						replaceWithSymlink(t, repo, secrets)
					} else {
						if slices.Contains(w.Files, "cfg/config.txt") || slices.Contains(w.Files, "cfg/sub/deep.txt") {
							t.Errorf("%s: files below the symlink listed: %v", when, w.Files)
						}
						if !tc.o.FullCopy && !slices.Contains(w.Deleted, "cfg/config.txt") {
							t.Errorf("%s: cfg/config.txt not deleted (as git status has it): deleted %v", when, w.Deleted)
						}
					}
					got := tarEntries(t, w, tc.wo)
					assertNoSecrets(t, got)
					if got["link-to-a"] != "symlink:a.txt" && !(tc.wo.GuestCheckout && got["link-to-a"] == "") {
						t.Errorf("%s: tracked symlink sent as %q", when, got["link-to-a"])
					}
					if tc.o.IncludeUntracked && when == "before Inspect" && got["cfg"] != "symlink:"+secrets {
						t.Errorf("%s: the untracked cfg symlink sent as %q", when, got["cfg"])
					}
				}
			})
		}
	})
}

// TestBeneathRefusesEscapes: the resolver itself: a symlinked parent, a
// symlink as the last component (opened as itself), dot-dot and absolute
// paths.
func TestBeneathRefusesEscapes(t *testing.T) {
	resolvers(t, func(t *testing.T) {
		root := t.TempDir()
		outside := t.TempDir()
		os.WriteFile(filepath.Join(outside, "secret"), []byte("x"), 0o600)
		os.Mkdir(filepath.Join(root, "d"), 0o755)
		os.WriteFile(filepath.Join(root, "d", "f"), []byte("in"), 0o644)
		os.Symlink(outside, filepath.Join(root, "out"))
		os.Symlink("d", filepath.Join(root, "in"))
		b, err := openBeneath(root)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		for _, rel := range []string{"out/secret", "in/f", "../" + filepath.Base(outside) + "/secret", "/etc/passwd", "d/../d/f", "d//f"} {
			if e, err := b.openEntry(rel); err == nil {
				e.close()
				t.Errorf("%s opened", rel)
			}
		}
		e, err := b.openEntry("d/f")
		if err != nil || e.file == nil {
			t.Fatalf("d/f: %v", err)
		}
		e.close()
		e, err = b.openEntry("out")
		if err != nil || e.link != outside || e.file != nil {
			t.Fatalf("out: %+v %v", e, err)
		}
	})
}
