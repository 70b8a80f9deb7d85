package imagespec

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/ext4"
)

// seedEntry is one tar entry as read back.
type seedEntry struct {
	dir  bool
	mode int64
	data string
}

// readSeed reads a seed and checks what every entry must be.
func readSeed(t *testing.T, b []byte) map[string]seedEntry {
	t.Helper()
	out := map[string]seedEntry{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(h.Name, "/")
		if path.IsAbs(h.Name) || path.Clean(name) != name || name == ".." || strings.HasPrefix(name, "../") ||
			!(name == seedDir || strings.HasPrefix(name, seedDir+"/")) {
			t.Fatalf("bad name %q", h.Name)
		}
		if h.Typeflag != tar.TypeDir && h.Typeflag != tar.TypeReg {
			t.Fatalf("%q has type %q", h.Name, h.Typeflag)
		}
		if _, dup := out[name]; dup {
			t.Fatalf("%q twice", name)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = seedEntry{dir: h.Typeflag == tar.TypeDir, mode: h.Mode, data: string(data)}
	}
}

// extract writes a seed below dir with exactly the modes it carries, as
// the build VM's /root would hold it.
func extract(t *testing.T, b []byte, dir string) {
	t.Helper()
	entries := readSeed(t, b)
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		e := entries[n]
		p := filepath.Join(dir, n)
		var err error
		if e.dir {
			err = os.Mkdir(p, 0o700)
		} else {
			err = os.WriteFile(p, []byte(e.data), 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// Modes last, deepest first, so a read-only directory is filled first.
	for i := len(names) - 1; i >= 0; i-- {
		if err := os.Chmod(filepath.Join(dir, names[i]), ext4.FileMode(uint32(entries[names[i]].mode))); err != nil {
			t.Fatal(err)
		}
	}
}

func seed(t *testing.T, s *Spec, apt []string) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := s.Seed(&b, apt); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestSeedTar(t *testing.T) {
	root := repo(t, map[string]string{"ci/motd": "hello\n", "conf/a": "A", "conf/sub/b": "B", "conf/sub/deeper/": ""})
	os.Chmod(filepath.Join(root, "conf/a"), 0o600)
	os.Chmod(filepath.Join(root, "conf/sub"), 0o750)
	os.Chmod(filepath.Join(root, "conf/sub/b"), 0o755|os.ModeSetuid)
	s := load(t, root, "[[copy]]\nsrc = \"ci/motd\"\ndst = \"/etc/motd\"\nmode = \"0640\"\n[[copy]]\nsrc = \"conf\"\ndst = \"/opt/conf\"\n")
	got := readSeed(t, seed(t, s, nil))
	want := map[string]seedEntry{
		".banger-build":                    {dir: true, mode: 0o700},
		".banger-build/files":              {dir: true, mode: 0o700},
		".banger-build/files/1":            {mode: 0o644, data: "hello\n"}, // the source's mode: build.sh sets mode
		".banger-build/files/2":            {dir: true, mode: 0o755},
		".banger-build/files/2/a":          {mode: 0o600, data: "A"},
		".banger-build/files/2/sub":        {dir: true, mode: 0o750},
		".banger-build/files/2/sub/b":      {mode: 0o4755, data: "B"},
		".banger-build/files/2/sub/deeper": {dir: true, mode: 0o755},
		".banger-build/build.sh":           {mode: 0o755},
	}
	script, err := s.script(nil)
	if err != nil {
		t.Fatal(err)
	}
	want[".banger-build/build.sh"] = seedEntry{mode: 0o755, data: script}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("seed\n%v\nwant\n%v", got, want)
	}
	// The same spec makes the same bytes.
	if !bytes.Equal(seed(t, s, nil), seed(t, s, nil)) {
		t.Fatal("two seeds of one spec differ")
	}
}

func TestSeedRefusesBadAptSources(t *testing.T) {
	s := load(t, repo(t, nil), "packages = [\"sqlite3\"]\n")
	for _, src := range []string{"deb http://x bookworm main\nrm -rf /", "http://x bookworm main", "deb x\x00", ""} {
		if err := s.Seed(io.Discard, []string{src}); err == nil {
			t.Errorf("accepted apt source %q", src)
		}
	}
	if err := (&Spec{Copy: []Copy{{Src: "a", Dst: "/a"}}}).Seed(io.Discard, nil); err == nil {
		t.Error("seeded a Spec whose copies were never read")
	}
}

// shells are the shells a quoting test runs: sh, and busybox's when there
// is one (the tiny image's).
func shells(t *testing.T) [][]string {
	out := [][]string{{"sh"}}
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	if bb, err := exec.LookPath("busybox"); err == nil && exec.Command(bb, "sh", "-c", "true").Run() == nil {
		out = append(out, []string{bb, "sh"})
	}
	return out
}

func TestShQuote(t *testing.T) {
	inputs := []string{"", "plain", "it's", "''", "'", `"`, `\`, `\'`, "a b\tc", "new\nline\n", "$(touch /nonexistent-banger)", "`id`", "$HOME ${x:-y} $1",
		"*", "~", "#not a comment", "-n", "é ☃", "\x01\x1b[31m", "'\\''", "; exit 7", "a\\\nb"}
	for _, sh := range shells(t) {
		for _, in := range inputs {
			cmd := exec.Command(sh[0], append(sh[1:], "-c", "printf '%s' "+shQuote(in))...)
			cmd.Dir = t.TempDir()
			out, err := cmd.Output()
			if err != nil || string(out) != in {
				t.Errorf("%s: %q came back as %q (%v)", sh[0], in, out, err)
			}
		}
	}
}

// buildTree makes the files a build script run needs: the seed extracted
// in work/ (the build VM's /root), an image tree in root/ with apt sources,
// host keys and a machine id, and a fake apt-get in bin/ that logs its
// arguments and the sources it saw.
func buildTree(t *testing.T, s *Spec, apt []string) (tmp string, run func() (string, error)) {
	t.Helper()
	tmp = t.TempDir()
	work := filepath.Join(tmp, "work")
	os.Mkdir(work, 0o700)
	extract(t, seed(t, s, apt), work)
	for name, body := range map[string]string{
		"root/etc/apt/sources.list":             "deb http://orig.example bookworm main\n",
		"root/etc/apt/sources.list.d/orig.list": "deb http://orig.example/extra bookworm main\n",
		"root/etc/ssh/ssh_host_ed25519_key":     "secret",
		"root/etc/ssh/ssh_host_ed25519_key.pub": "public",
		"root/etc/ssh/sshd_config":              "kept",
		"root/etc/machine-id":                   "0123456789abcdef\n",
		"root/etc/existing":                     "kept",
		"root/opt/conf/old":                     "kept",
		"root/var/lib/apt/lists/stale":          "stale",
		"bin/apt-get":                           "#!/bin/sh\necho \"apt-get $*\" >>\"$LOG\"\ncat \"$BANGER_BUILD_ROOT/etc/apt/sources.list\" >>\"$LOG\"\nls \"$BANGER_BUILD_ROOT/etc/apt/sources.list.d\" >>\"$LOG\"\n",
	} {
		p := filepath.Join(tmp, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run = func() (string, error) {
		script := filepath.Join(work, ".banger-build/build.sh")
		if out, err := exec.Command("sh", "-n", script).CombinedOutput(); err != nil {
			t.Fatalf("sh -n build.sh: %v: %s", err, out)
		}
		cmd := exec.Command("sh", script)
		cmd.Dir = tmp
		cmd.Env = append(os.Environ(), "BANGER_BUILD_ROOT="+filepath.Join(tmp, "root"), "LOG="+filepath.Join(tmp, "apt.log"),
			"PATH="+filepath.Join(tmp, "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	return tmp, run
}

func TestBuildScriptRuns(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	root := repo(t, map[string]string{
		"ci/motd":           "hello\n",
		"conf/a":            "A",
		"conf/sub/b":        "B",
		"conf/it's":         "quote",
		"conf/-rf":          "dash",
		"conf/a b":          "space",
		"conf/$(x)":         "dollar",
		"conf/new\nline":    "newline",
		"conf/sub/deeper/":  "",
		"etc-overlay/hosts": "127.0.0.1 built\n",
		"bin/tool":          "#!/bin/sh\n",
	})
	os.Chmod(filepath.Join(root, "conf/a"), 0o600)
	os.Chmod(filepath.Join(root, "conf/sub"), 0o750)
	os.Chmod(filepath.Join(root, "conf/sub/b"), 0o751)
	os.Chmod(filepath.Join(root, "etc-overlay"), 0o775)
	s := load(t, root, `packages = ["sqlite3", "cowsay=3.03+dfsg2-8"]
run = [
  "printf '%s\\n' \"it's\" > it",
  '''x='a "b" \c $HOME `+"`id`"+`'; printf '%s\n' "$x" > "$BANGER_BUILD_ROOT/quoted"''',
  'test "$(cat "$BANGER_BUILD_ROOT/etc/motd")" = hello',
  '''
cat > "$BANGER_BUILD_ROOT/heredoc" <<'EOF'
it's $HOME
EOF
''',
]
[[copy]]
src = "ci/motd"
dst = "/etc/motd"
mode = "0640"
[[copy]]
src = "conf"
dst = "/opt/it's conf"
[[copy]]
src = "conf"
dst = "/opt/conf"
[[copy]]
src = "etc-overlay"
dst = "/etc"
mode = "0755"
[[copy]]
src = "bin/tool"
dst = "/usr/local/bin/tool"
mode = "4755"
`)
	apt := []string{"deb http://mirror.example/debian bookworm main", "deb http://mirror.example/debian-security bookworm-security main"}
	tmp, run := buildTree(t, s, apt)
	out, err := run()
	if err != nil {
		t.Fatalf("build.sh: %v\n%s", err, out)
	}
	for _, want := range []string{
		"banger-build: apt sources: 2 given for the build\n",
		"banger-build: apt-get update\n",
		"banger-build: apt-get install sqlite3 cowsay=3.03+dfsg2-8\n",
		"banger-build: copy 1/5: ci/motd -> /etc/motd\n",
		"banger-build: copy 2/5: conf -> /opt/it's conf\n",
		"banger-build: step 1/4: printf '%s\\n' \"it's\" > it\n",
		"banger-build: step 4/4: cat > \"$BANGER_BUILD_ROOT/heredoc\" <<'EOF' …\n",
		"banger-build: clean up\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if !strings.HasSuffix(out, "banger-build: done\n") {
		t.Errorf("output does not end with done:\n%s", out)
	}
	r := filepath.Join(tmp, "root")
	file := func(name, want string, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(r, name)
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			return
		}
		if fi.Mode() != mode {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode(), mode)
		}
		if !fi.IsDir() {
			if b, _ := os.ReadFile(p); string(b) != want {
				t.Errorf("%s: %q, want %q", name, b, want)
			}
		}
	}
	gone := func(name string) {
		t.Helper()
		if _, err := os.Lstat(filepath.Join(r, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still there (%v)", name, err)
		}
	}
	// apt saw the build's sources only; the image's are back.
	log, _ := os.ReadFile(filepath.Join(tmp, "apt.log"))
	wantLog := "apt-get update\n" + strings.Join(apt, "\n") + "\n" +
		"apt-get install -y --no-install-recommends sqlite3 cowsay=3.03+dfsg2-8\n" + strings.Join(apt, "\n") + "\n" +
		"apt-get clean\n" + strings.Join(apt, "\n") + "\n"
	if string(log) != wantLog {
		t.Errorf("apt log:\n%s\nwant:\n%s", log, wantLog)
	}
	file("etc/apt/sources.list", "deb http://orig.example bookworm main\n", 0o755)
	file("etc/apt/sources.list.d/orig.list", "deb http://orig.example/extra bookworm main\n", 0o755)
	gone("var/lib/apt/lists/stale")
	// The copies, with their modes.
	file("etc/motd", "hello\n", 0o640)
	for _, dir := range []string{"opt/it's conf", "opt/conf"} {
		file(dir, "", os.ModeDir|0o755)
		file(dir+"/a", "A", 0o600)
		file(dir+"/sub", "", os.ModeDir|0o750)
		file(dir+"/sub/b", "B", 0o751)
		file(dir+"/sub/deeper", "", os.ModeDir|0o755)
		file(dir+"/it's", "quote", 0o644)
		file(dir+"/-rf", "dash", 0o644)
		file(dir+"/a b", "space", 0o644)
		file(dir+"/$(x)", "dollar", 0o644)
		file(dir+"/new\nline", "newline", 0o644)
	}
	file("opt/conf/old", "kept", 0o755) // merged, nothing removed
	file("etc", "", os.ModeDir|0o755)   // mode, not the overlay's 0775
	file("etc/hosts", "127.0.0.1 built\n", 0o644)
	file("etc/existing", "kept", 0o755)
	file("usr/local/bin/tool", "#!/bin/sh\n", os.ModeSetuid|0o755)
	// The steps ran in order, in "/", after the copies.
	file("it", "it's\n", 0o644)
	file("quoted", "a \"b\" \\c $HOME `id`\n", 0o644)
	file("heredoc", "it's $HOME\n", 0o644)
	// Each VM makes its own host keys and machine id.
	gone("etc/ssh/ssh_host_ed25519_key")
	gone("etc/ssh/ssh_host_ed25519_key.pub")
	file("etc/ssh/sshd_config", "kept", 0o755)
	file("etc/machine-id", "", 0o755)
}

func TestBuildScriptFails(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	s := load(t, repo(t, nil), `packages = ["sqlite3"]
run = ['echo partial > "$BANGER_BUILD_ROOT/partial"; exit 3', 'touch "$BANGER_BUILD_ROOT/never"']
`)
	tmp, run := buildTree(t, s, []string{"deb http://mirror.example/debian bookworm main"})
	out, err := run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("exit %v, want status 3:\n%s", err, out)
	}
	if !strings.Contains(out, "banger-build: step 1/2 failed (exit status 3)\n") || strings.Contains(out, "step 2/2") {
		t.Errorf("output:\n%s", out)
	}
	r := filepath.Join(tmp, "root")
	if b, _ := os.ReadFile(filepath.Join(r, "partial")); string(b) != "partial\n" {
		t.Errorf("step 1 did not run")
	}
	if _, err := os.Stat(filepath.Join(r, "never")); err == nil {
		t.Error("step 2 ran after step 1 failed")
	}
	// The trap put the image's apt sources back.
	if b, _ := os.ReadFile(filepath.Join(r, "etc/apt/sources.list")); string(b) != "deb http://orig.example bookworm main\n" {
		t.Errorf("sources.list is %q", b)
	}
	if _, err := os.Stat(filepath.Join(r, "etc/apt/sources.list.d/orig.list")); err != nil {
		t.Errorf("sources.list.d not restored: %v", err)
	}
}

func TestBuildScriptKeepsAptSources(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	s := load(t, repo(t, nil), "packages = [\"sqlite3\"]\n")
	tmp, run := buildTree(t, s, nil)
	if out, err := run(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	log, _ := os.ReadFile(filepath.Join(tmp, "apt.log"))
	if !strings.HasPrefix(string(log), "apt-get update\ndeb http://orig.example bookworm main\norig.list\n") {
		t.Errorf("apt did not see the image's sources:\n%s", log)
	}
	if _, err := os.Stat(filepath.Join(tmp, "work/.banger-build/apt-orig")); err == nil {
		t.Error("sources were swapped without apt sources given")
	}

	// Nothing to do: no apt at all.
	s = load(t, repo(t, nil), "")
	tmp, run = buildTree(t, s, nil)
	if out, err := run(); err != nil || !strings.HasSuffix(out, "banger-build: clean up\nbanger-build: done\n") {
		t.Fatalf("%v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(tmp, "apt.log")); err == nil {
		t.Error("apt-get ran with no packages")
	}
}

func TestLabel(t *testing.T) {
	for in, want := range map[string]string{
		"ls -l":                 "ls -l",
		"\x1b[31mred":           `\x1b[31mred`,
		"a\tb":                  `a\tb`,
		strings.Repeat("x", 80): strings.Repeat("x", 72) + "…",
		"é☃":                    "é☃",
	} {
		if got := label(in); got != want {
			t.Errorf("label(%q) = %q, want %q", in, got, want)
		}
	}
}

// An image whose sources.list is a symlink gets the link back, and the
// file it points to is never written.
func TestBuildScriptSymlinkedAptSources(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	s := load(t, repo(t, nil), "packages = [\"sqlite3\"]\n")
	tmp, run := buildTree(t, s, []string{"deb http://mirror.example/debian bookworm main"})
	r := filepath.Join(tmp, "root")
	list := filepath.Join(r, "etc/apt/sources.list")
	os.Remove(list)
	os.WriteFile(filepath.Join(r, "real-sources"), []byte("deb http://real.example bookworm main\n"), 0o644)
	if err := os.Symlink("../../real-sources", list); err != nil {
		t.Fatal(err)
	}
	if out, err := run(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	log, _ := os.ReadFile(filepath.Join(tmp, "apt.log"))
	if !strings.HasPrefix(string(log), "apt-get update\ndeb http://mirror.example/debian bookworm main\n") {
		t.Errorf("apt saw:\n%s", log)
	}
	if b, _ := os.ReadFile(filepath.Join(r, "real-sources")); string(b) != "deb http://real.example bookworm main\n" {
		t.Errorf("the link's target was written: %q", b)
	}
	if target, err := os.Readlink(list); err != nil || target != "../../real-sources" {
		t.Errorf("sources.list is not the link again: %q %v", target, err)
	}
}
