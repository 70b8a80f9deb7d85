package imagespec

// The fuzz target for .banger/image.toml, a file a repository (anyone's)
// supplies. scripts/fuzz.sh lists it.

import (
	"bytes"
	"errors"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var fzHex12 = regexp.MustCompile(`^[0-9a-f]{12}$`)

// FuzzParse: Parse never panics; every error is an *Error naming the file,
// on one line; an accepted spec keeps every rule of the package doc, has a
// stable 12-hex-digit key and seeds a tar of clean relative names.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"",
		"# nothing\n",
		"base = \"debian-bookworm\"\npackages = [\"sqlite3\", \"cowsay=3.03+dfsg2-8\"]\nrun = [\"echo built > /etc/banger-derived\", \"useradd -m dev\"]\n",
		"[[copy]]\nsrc = \"a\"\ndst = \"/etc/motd\"\nmode = \"0644\"\n",
		"[[copy]]\nsrc = \"d\"\ndst = \"/opt/d\"\n[[copy]]\nsrc = \".\"\ndst = \"/srv/repo\"\nmode = \"755\"\n",
		"copy = [{src = \"a\", dst = \"/a\"}, {src = \"l\", dst = \"/l\"}]\n",
		"[copy]\nsrc = \"a\"\ndst = \"/a\"\n",
		"Packages = [\"x\"]\n",
		"run = ['''\nset -x\n''', \"\"\"\nit's\"\"\"]\n",
		"run = [\"a\\u0000b\"]\n",
		"packages = [\"a1=1 2\", 'b=']\n",
		"[[copy]]\nsrc = \"../x\"\ndst = \"/root/x\"\nmode = 0o644\n",
		"base = \nx = = 1\n[[",
		"[a.b.c]\n[[copy.x]]\n'q' = 1\n\"\\\"\" = 2\n",
	} {
		f.Add([]byte(s))
	}
	root := f.TempDir()
	for name, body := range map[string]string{"a": "A\n", "d/f": "F", "d/sub/g": "G"} {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			f.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			f.Fatal(err)
		}
	}
	if err := os.Symlink("a", filepath.Join(root, "l")); err != nil {
		f.Fatal(err)
	}
	const file = "repo/.banger/image.toml"
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(file, root, data)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("%T is not an *Error: %v", err, err)
			}
			if e.File != file || !strings.HasPrefix(err.Error(), file+":") || e.Msg == "" {
				t.Fatalf("error does not name the file: %+v", e)
			}
			if strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("error is not one line: %q", err.Error())
			}
			if s != nil {
				t.Fatalf("refused (%v) but returned %+v", err, s)
			}
			return
		}
		fzCheck(t, s)
		key := s.Key("base@1")
		if !fzHex12.MatchString(key) {
			t.Fatalf("key %q", key)
		}
		s2, err := Parse(file, root, data)
		if err != nil || s2.Key("base@1") != key {
			t.Fatalf("a second Parse gave %v, key %q then %q", err, key, s2.Key("base@1"))
		}
		var b bytes.Buffer
		if err := s.Seed(&b, []string{"deb http://deb.debian.org/debian bookworm main"}); err != nil {
			t.Fatalf("Seed: %v", err)
		}
		entries := readSeed(t, b.Bytes())
		if _, ok := entries[".banger-build/build.sh"]; !ok {
			t.Fatal("no build.sh in the seed")
		}
	})
}

// fzCheck checks an accepted spec against the package doc's rules, written
// out apart from the checks in Parse.
func fzCheck(t *testing.T, s *Spec) {
	t.Helper()
	if s.Base != "" && (len(s.Base) > 63 || !regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`).MatchString(s.Base) || strings.ContainsAny(s.Base[len(s.Base)-1:], "._-")) {
		t.Fatalf("accepted base %q", s.Base)
	}
	if len(s.Packages) > 200 || len(s.Run) > 64 || len(s.Copy) > 64 {
		t.Fatalf("accepted %d packages, %d steps, %d copies", len(s.Packages), len(s.Run), len(s.Copy))
	}
	names := map[string]bool{}
	for _, p := range s.Packages {
		name, _, _ := strings.Cut(p, "=")
		if names[name] || strings.HasPrefix(p, "-") || strings.ContainsAny(p, " '\"\\\n$`;") {
			t.Fatalf("accepted package %q", p)
		}
		names[name] = true
	}
	for _, r := range s.Run {
		if strings.TrimSpace(r) == "" || len(r) > 8<<10 || strings.IndexByte(r, 0) >= 0 {
			t.Fatalf("accepted step %q", r)
		}
	}
	if len(s.sources) != len(s.Copy) {
		t.Fatalf("%d copies, %d sources read", len(s.Copy), len(s.sources))
	}
	for _, c := range s.Copy {
		if c.Src == "" || path.IsAbs(c.Src) || path.Clean(c.Src) != c.Src || c.Src == ".." || strings.HasPrefix(c.Src, "../") || c.Src == "l" {
			t.Fatalf("accepted src %q", c.Src)
		}
		if !path.IsAbs(c.Dst) || path.Clean(c.Dst) != c.Dst || c.Dst == "/" {
			t.Fatalf("accepted dst %q", c.Dst)
		}
		for _, d := range []string{"/root", "/proc", "/sys", "/dev", "/run", "/tmp"} {
			if c.Dst == d || strings.HasPrefix(c.Dst, d+"/") {
				t.Fatalf("accepted dst %q", c.Dst)
			}
		}
	}
}
