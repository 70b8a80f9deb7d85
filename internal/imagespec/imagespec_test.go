package imagespec

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-dev/banger/internal/ext4"
	"github.com/banger-dev/banger/internal/securefs"
)

// repo makes a repository: name → content; a name ending in "/" is a
// directory, "->target" makes a symlink, "|fifo" a named pipe.
func repo(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case strings.HasSuffix(name, "/"):
			err = os.MkdirAll(p, 0o755)
		case strings.HasPrefix(body, "->"):
			err = os.Symlink(body[2:], p)
		case body == "|fifo":
			err = syscall.Mkfifo(p, 0o644)
		default:
			err = os.WriteFile(p, []byte(body), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func writeSpec(t *testing.T, root, body string) string {
	t.Helper()
	p := filepath.Join(root, File)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func load(t *testing.T, root, body string) *Spec {
	t.Helper()
	writeSpec(t, root, body)
	s, err := Load(root)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestLoad(t *testing.T) {
	root := repo(t, map[string]string{"ci/motd": "hello\n", "conf/a": "A", "conf/sub/b": "B"})
	if err := os.Chmod(filepath.Join(root, "conf/sub/b"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := load(t, root, `# a derived image
base = "debian-bookworm"
packages = ["sqlite3", "cowsay=3.03+dfsg2-8"]
run = ["echo built > /etc/banger-derived", "useradd -m dev"]

[[copy]]
src = "ci/motd"
dst = "/etc/motd"
mode = "0640"

[[copy]]
src = "conf"
dst = "/opt/conf"
`)
	want := Spec{File: filepath.Join(root, File), Root: root, Base: "debian-bookworm",
		Packages: []string{"sqlite3", "cowsay=3.03+dfsg2-8"},
		Run:      []string{"echo built > /etc/banger-derived", "useradd -m dev"},
		Copy:     []Copy{{Src: "ci/motd", Dst: "/etc/motd", Mode: 0o640}, {Src: "conf", Dst: "/opt/conf"}}}
	if s.File != want.File || s.Root != want.Root || s.Base != want.Base || fmt.Sprint(s.Packages) != fmt.Sprint(want.Packages) ||
		fmt.Sprint(s.Run) != fmt.Sprint(want.Run) || fmt.Sprint(s.Copy) != fmt.Sprint(want.Copy) {
		t.Fatalf("got %+v\nwant %+v", *s, want)
	}
	if len(s.sources) != 2 || len(s.sources[0]) != 1 || string(s.sources[0][0].data) != "hello\n" || s.sources[0][0].mode != 0o644 {
		t.Fatalf("copy 1 read as %+v", s.sources[0])
	}
	var got []string
	for _, e := range s.sources[1] {
		got = append(got, fmt.Sprintf("%s:%v:%o:%s", e.rel, e.dir, e.mode, e.data))
	}
	if w := "[:true:755: a:false:644:A sub:true:755: sub/b:false:600:B]"; fmt.Sprint(got) != w {
		t.Fatalf("copy 2 read as %v, want %v", got, w)
	}

	// Everything is optional.
	e := load(t, repo(t, nil), "# nothing yet\n")
	if e.Base != "" || len(e.Packages)+len(e.Run)+len(e.Copy) != 0 {
		t.Fatalf("empty file gave %+v", e)
	}
}

func TestRefusals(t *testing.T) {
	files := map[string]string{
		"a": "A", "d/f": "F", "d/sub/g": "G",
		"linkdir":     "->d",
		"linkfile":    "->a",
		"withlink/x":  "X",
		"withlink/l":  "->x",
		"withfifo/p":  "|fifo",
		"withfifo/ok": "ok",
	}
	cp := func(src, dst string) string { return fmt.Sprintf("[[copy]]\nsrc = %q\ndst = %q\n", src, dst) }
	cases := []struct {
		name, body string
		want       string // the message must start FILE + want
		has        string // and contain this
	}{
		{"syntax", "base = \n", ":1: base: ", "toml.io"},
		{"syntax later", "base = \"a\"\nx = = 1\n", ":2: x: ", "toml.io"},
		{"duplicate key", "base = \"a\"\nbase = \"b\"\n", ":2: base: ", "already defined"},
		{"unknown key", "base = \"a\"\nbogus = 1\n", ":2: bogus: ", "unknown key; the keys are base, packages, run and [[copy]]"},
		{"unknown table", "[extra]\nx = 1\n", ":1: extra: ", "unknown key"},
		{"unknown copy key", cp("a", "/a") + cp("a", "/b") + "srcx = \"y\"\n", ":7: copy[2].srcx: ", "a [[copy]] table has src, dst and mode"},
		{"mixed case", "\nPackages = [\"sqlite3\"]\n", ":2: Packages: ", `keys are lower case: write "packages"`},
		{"mixed case in copy", "[[copy]]\nSrc = \"a\"\ndst = \"/a\"\n", ":2: copy[1].Src: ", `write "src"`},
		{"quoted mixed case", "\"BASE\" = \"x\"\n", ":1: BASE: ", `write "base"`},
		{"single copy table", "\n[copy]\nsrc = \"a\"\ndst = \"/a\"\n", ":2: copy: ", "write [[copy]]"},
		{"packages not array", "packages = \"sqlite3\"\n", ":1: packages: ", "must be an array of strings"},
		{"package not string", "packages = [\n  \"a1\",\n  2,\n]\n", ":3: packages: ", "must be an array of strings"},
		{"base not string", "base = 1\n", ":1: base: ", "must be a string"},
		{"mode integer", cp("a", "/a") + "mode = 0o644\n", ":4: copy[1].mode: ", `must be a string of octal digits, like mode = "0644"`},
		{"copy not tables", "copy = [\"a\"]\n", ":1: copy: ", "must be [[copy]] tables"},

		{"bad base", "\nbase = \"Debian\"\n", ":2: base: ", `"Debian" is not an image name`},
		{"base too long", "base = \"" + strings.Repeat("a", 64) + "\"\n", ":1: base: ", "at most 63"},
		{"base ends badly", "base = \"deb-\"\n", ":1: base: ", "not an image name"},
		{"bad package", "packages = [\n  \"sqlite3\",\n  \"Bad\",\n]\n", ":3: packages[2]: ", `"Bad" is not a Debian package`},
		{"option as package", "packages = [\"-f\"]\n", ":1: packages[1]: ", "not a Debian package"},
		{"short package", "packages = [\"a\"]\n", ":1: packages[1]: ", "not a Debian package"},
		{"bad version", "packages = [\"a1=1 2\"]\n", ":1: packages[1]: ", `"1 2" is not a Debian version`},
		{"empty version", "packages = [\"a1=\"]\n", ":1: packages[1]: ", "is not a Debian version"},
		{"duplicate package", "packages = [\"sqlite3\", 'sqlite3=3.40']\n", ":1: packages[2]: ", `"sqlite3" is listed twice (packages[1]`},
		{"too many packages", "packages = [" + strings.Repeat(`"p0",`, 201) + "]\n", ":1: packages: ", "201 packages; at most 200"},
		{"empty step", "run = [\n  \"ls\",\n  \"  \",\n]\n", ":3: run[2]: ", "is empty"},
		{"long step", "run = [\"" + strings.Repeat("x", 8193) + "\"]\n", ":1: run[1]: ", "is 8193 bytes; at most 8192"},
		{"NUL in step", "run = [\"a\\u0000b\"]\n", ":1: run[1]: ", "NUL"},
		{"multi-line step", "run = [\n'''\nexit 0\n''',\n'''\n\n''']\n", ":5: run[2]: ", "is empty"},
		{"too many steps", "run = [" + strings.Repeat(`"true",`, 65) + "]\n", ":1: run: ", "65 steps; at most 64"},

		{"src missing", "[[copy]]\ndst = \"/x\"\n", ":1: copy[1].src: ", "is missing"},
		{"src absolute", cp("/etc/passwd", "/x"), ":2: copy[1].src: ", "is absolute"},
		{"src up", cp("../x", "/x"), ":2: copy[1].src: ", "leaves the repository"},
		{"src up deep", cp("d/../../x", "/x"), ":2: copy[1].src: ", "leaves the repository"},
		{"src unclean", cp("d/../a", "/x"), ":2: copy[1].src: ", `is not a clean path: write "a"`},
		{"src dot slash", cp("./a", "/x"), ":2: copy[1].src: ", `write "a"`},
		{"src control", cp("a\n", "/x"), ":2: copy[1].src: ", "control character"},
		{"src absent", cp("a", "/a") + cp("nope", "/x"), ":5: copy[2].src: ", `"nope" does not exist in the repository`},
		{"src through symlink", cp("linkdir/f", "/x"), ":2: copy[1].src: ", `"linkdir/f": "linkdir" is a symlink`},
		{"src symlink", cp("linkfile", "/x"), ":2: copy[1].src: ", `"linkfile" is a symlink`},
		{"symlink inside", cp("withlink", "/x"), ":2: copy[1].src: ", `"withlink/l" is a symlink; banger copies no symlinks`},
		{"fifo inside", cp("withfifo", "/x"), ":2: copy[1].src: ", `"withfifo/p" is not a regular file or directory (named pipe)`},
		{"src file as dir", cp("a/b", "/x"), ":2: copy[1].src: ", "not a directory"},
		{"dst missing", "[[copy]]\nsrc = \"a\"\n", ":1: copy[1].dst: ", "is missing"},
		{"dst relative", cp("a", "etc/motd"), ":3: copy[1].dst: ", `is not absolute: give the path in the image, like "/etc/motd"`},
		{"dst unclean", cp("a", "/etc//motd/"), ":3: copy[1].dst: ", `write "/etc/motd"`},
		{"dst root", cp("a", "/"), ":3: copy[1].dst: ", "image's root"},
		{"dst /root", cp("a", "/root/.bashrc"), ":3: copy[1].dst: ", "under /root: it is each VM's own work disk"},
		{"dst /root itself", cp("d", "/root"), ":3: copy[1].dst: ", "under /root"},
		{"dst /proc", cp("a", "/proc/x"), ":3: copy[1].dst: ", "under /proc: it is not kept in the image"},
		{"dst /sys", cp("a", "/sys/x"), ":3: copy[1].dst: ", "under /sys"},
		{"dst /dev", cp("a", "/dev/x"), ":3: copy[1].dst: ", "under /dev"},
		{"dst /run", cp("a", "/run"), ":3: copy[1].dst: ", "under /run"},
		{"dst /tmp", cp("a", "/tmp/x"), ":3: copy[1].dst: ", "under /tmp"},
		{"mode hex", cp("a", "/a") + "mode = \"0x1\"\n", ":4: copy[1].mode: ", "is not a mode"},
		{"mode 8", cp("a", "/a") + "mode = \"0648\"\n", ":4: copy[1].mode: ", "is not a mode"},
		{"mode long", cp("a", "/a") + "mode = \"00644\"\n", ":4: copy[1].mode: ", "is not a mode"},
		{"mode empty", cp("a", "/a") + "mode = \"\"\n", ":4: copy[1].mode: ", "is not a mode"},
		{"mode zero", cp("a", "/a") + "mode = \"0000\"\n", ":4: copy[1].mode: ", "no permission"},
		{"too many copies", strings.Repeat(cp("a", "/a"), 65), ":193: copy: ", "65 [[copy]] tables; at most 64"},
		{"inline copies", "copy = [\n  {src = \"a\", dst = \"/a\"},\n  {src = \"/abs\", dst = \"/b\"},\n]\n", ":3: copy[2].src: ", "is absolute"},
		{"too big", "# " + strings.Repeat("x", 64<<10) + "\n", ": ", "larger than 64 KiB"},
	}
	root := repo(t, files)
	seen := map[string]bool{}
	for _, c := range cases {
		if seen[c.name] {
			t.Fatalf("two cases are named %q", c.name)
		}
		seen[c.name] = true
	}
	// Where openat2 is refused, securefs walks the path one component at a
	// time: the same refusals, the same messages.
	for _, walk := range []bool{false, true} {
		if walk {
			defer securefs.ForceComponentWalk()()
		}
		for _, c := range cases {
			testRefusal(t, root, c.name, c.body, c.want, c.has, walk)
		}
	}
}

func testRefusal(t *testing.T, root, name, body, want, has string, walk bool) {
	t.Helper()
	if walk {
		name += "/component-walk"
	}
	t.Run(name, func(t *testing.T) {
		file := writeSpec(t, root, body)
		s, err := Load(root)
		if err == nil {
			t.Fatalf("accepted %q: %+v", body, s)
		}
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("%T is not an *Error: %v", err, err)
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, file+want) || !strings.Contains(msg, has) {
			t.Fatalf("got  %s\nwant %s%s…%s…", msg, file, want, has)
		}
		if strings.ContainsAny(msg, "\n\r") {
			t.Fatalf("not one line: %q", msg)
		}
		// Parse says the same.
		data, _ := os.ReadFile(file)
		if _, err2 := Parse(file, root, data); err2 == nil || err2.Error() != msg {
			t.Fatalf("Parse: %v, Load: %v", err2, err)
		}
	})
}

func TestAccepted(t *testing.T) {
	root := repo(t, map[string]string{"a": "A", "d/f": "F"})
	for _, body := range []string{
		"base = \"\"\n",
		"base = \"my.image_2\"\n",
		"packages = [\"g++\", \"libc6=2.36-9+deb12u4\", \"x11-apps=7.7+9~1:a\"]\n",
		"[[copy]]\nsrc = \".\"\ndst = \"/srv/repo\"\n",
		"[[copy]]\nsrc = \"a\"\ndst = \"/rootfs/a\"\nmode = \"4755\"\n",
		"[[copy]]\nsrc = \"a\"\ndst = \"/tmpx\"\nmode = \"7\"\n",
		"copy = [{src = \"d\", dst = \"/opt/d\"}]\n",
		"run = ['''\nset -x\necho \"it's\"\n''']\n",
	} {
		writeSpec(t, root, body)
		if _, err := Load(root); err != nil {
			t.Errorf("%q: %v", body, err)
		}
	}
}

func TestModes(t *testing.T) {
	root := repo(t, map[string]string{"a": "A"})
	for in, want := range map[string]fs.FileMode{"0644": 0o644, "755": 0o755, "4755": 0o755 | fs.ModeSetuid, "2711": 0o711 | fs.ModeSetgid, "1777": 0o777 | fs.ModeSticky, "1": 0o1} {
		s := load(t, root, fmt.Sprintf("[[copy]]\nsrc = \"a\"\ndst = \"/a\"\nmode = %q\n", in))
		if s.Copy[0].Mode != want {
			t.Errorf("mode %q = %v, want %v", in, s.Copy[0].Mode, want)
		}
		if got := fmt.Sprintf("%o", ext4.UnixMode(want)); strings.TrimLeft(in, "0") != got {
			t.Errorf("ext4.UnixMode(%v) = %s, want %s", want, got, in)
		}
	}
}

func TestCaps(t *testing.T) {
	t.Run("bytes", func(t *testing.T) {
		root := repo(t, map[string]string{"small": strings.Repeat("x", 1<<20)})
		big := filepath.Join(root, "big")
		f, err := os.Create(big)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(32<<20 - 1<<20 + 1); err != nil { // with "small": one byte over
			t.Fatal(err)
		}
		f.Close()
		writeSpec(t, root, "[[copy]]\nsrc = \"small\"\ndst = \"/s\"\n[[copy]]\nsrc = \"big\"\ndst = \"/b\"\n")
		_, err = Load(root)
		if err == nil || !strings.Contains(err.Error(), ":5: copy[2].src: the copies hold more than 32 MiB (at \"big\")") {
			t.Fatalf("got %v", err)
		}
		if err := os.Truncate(big, 32<<20-1<<20); err != nil { // exactly at the cap
			t.Fatal(err)
		}
		if _, err := Load(root); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("entries", func(t *testing.T) {
		root := repo(t, map[string]string{"many/": ""})
		for i := range 1999 { // with "many" itself: 2000
			if err := os.WriteFile(filepath.Join(root, "many", fmt.Sprint(i)), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		writeSpec(t, root, "[[copy]]\nsrc = \"many\"\ndst = \"/m\"\n")
		if _, err := Load(root); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "many", "one-more"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Load(root)
		if err == nil || !strings.Contains(err.Error(), ":2: copy[1].src: the copies hold more than 2000 files and directories") {
			t.Fatalf("got %v", err)
		}
	})
}

func TestFind(t *testing.T) {
	root := repo(t, nil)
	p, ok, err := Find(root)
	if p != filepath.Join(root, File) || ok || err != nil {
		t.Fatalf("no file: %q %v %v", p, ok, err)
	}
	writeSpec(t, root, "")
	if _, ok, err := Find(root); !ok || err != nil {
		t.Fatalf("file: %v %v", ok, err)
	}

	other := repo(t, map[string]string{"real.toml": "", "real/image.toml": ""})
	cases := map[string]func(dir string){
		"symlinked file": func(dir string) {
			os.MkdirAll(filepath.Join(dir, ".banger"), 0o755)
			os.Symlink(filepath.Join(other, "real.toml"), filepath.Join(dir, File))
		},
		"symlinked dir":   func(dir string) { os.Symlink(filepath.Join(other, "real"), filepath.Join(dir, ".banger")) },
		"dir as file":     func(dir string) { os.MkdirAll(filepath.Join(dir, File), 0o755) },
		".banger is file": func(dir string) { os.WriteFile(filepath.Join(dir, ".banger"), nil, 0o644) },
	}
	for name, setup := range cases {
		dir := t.TempDir()
		setup(dir)
		_, ok, err := Find(dir)
		var e *Error
		if ok || !errors.As(err, &e) {
			t.Errorf("%s: %v %v", name, ok, err)
			continue
		}
		// Load refuses the same.
		if _, err := Load(dir); err == nil {
			t.Errorf("%s: Load accepted it", name)
		} else if !errors.As(err, &e) {
			t.Errorf("%s: Load: %T %v", name, err, err)
		}
	}
}

func TestErrorFormat(t *testing.T) {
	for _, c := range []struct {
		e    Error
		want string
	}{
		{Error{File: "f", Line: 3, Key: "base", Msg: "m"}, "f:3: base: m"},
		{Error{File: "f", Key: "base", Msg: "m"}, "f: base: m"},
		{Error{File: "f", Line: 2, Msg: "m"}, "f:2: m"},
		{Error{File: "f", Msg: "m"}, "f: m"},
	} {
		if got := c.e.Error(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.e, got, c.want)
		}
	}
}

func TestKey(t *testing.T) {
	root := repo(t, map[string]string{"ci/motd": "hello\n", "conf/a": "A", "conf/sub/b": "B"})
	const body = `base = "debian-bookworm"
packages = ["sqlite3", "cowsay"]
run = ["echo built > /etc/banger-derived"]
[[copy]]
src = "ci/motd"
dst = "/etc/motd"
[[copy]]
src = "conf"
dst = "/opt/conf"
mode = "0755"
`
	key := load(t, root, body).Key("debian-bookworm@abc")
	if !regexp.MustCompile(`^[0-9a-f]{12}$`).MatchString(key) {
		t.Fatalf("key %q", key)
	}
	same := func(what, body string) {
		t.Helper()
		if k := load(t, root, body).Key("debian-bookworm@abc"); k != key {
			t.Errorf("%s changed the key", what)
		}
	}
	differs := func(what, body, base string) {
		t.Helper()
		if k := load(t, root, body).Key(base); k == key {
			t.Errorf("%s did not change the key", what)
		}
	}
	same("reloading", body)
	same("comments and whitespace", "# derived\n\n"+strings.ReplaceAll(strings.ReplaceAll(body, " = ", "    =  "), "\n", "   # c\n\n"))
	same("key order and quoting", `run = ['echo built > /etc/banger-derived']
packages = [
  "sqlite3",
  "cowsay",
]
base = 'debian-bookworm'
copy = [{dst = "/etc/motd", src = "ci/motd"}, {mode = "755", src = "conf", dst = "/opt/conf"}]
`)
	differs("the base", body, "debian-bookworm@abd")
	differs("package order", strings.Replace(body, `["sqlite3", "cowsay"]`, `["cowsay", "sqlite3"]`, 1), "debian-bookworm@abc")
	differs("a step", strings.Replace(body, "built", "built!", 1), "debian-bookworm@abc")
	differs("a dst", strings.Replace(body, "/opt/conf", "/opt/conf2", 1), "debian-bookworm@abc")
	differs("a mode", strings.Replace(body, `"0755"`, `"0750"`, 1), "debian-bookworm@abc")
	differs("splitting a step", strings.Replace(body, `["echo built > /etc/banger-derived"]`, `["echo built", "> /etc/banger-derived"]`, 1), "debian-bookworm@abc")

	// The copied files: bytes, modes, names.
	change := func(what string, do func()) {
		t.Helper()
		do()
		k := load(t, root, body).Key("debian-bookworm@abc")
		if k == key {
			t.Errorf("%s did not change the key", what)
		}
		key = k
	}
	change("a byte of a copied file", func() { os.WriteFile(filepath.Join(root, "ci/motd"), []byte("hellO\n"), 0o644) })
	change("a byte deep in a copied dir", func() { os.WriteFile(filepath.Join(root, "conf/sub/b"), []byte("b"), 0o644) })
	change("a copied file's mode", func() { os.Chmod(filepath.Join(root, "conf/a"), 0o600) })
	change("a copied dir's mode", func() { os.Chmod(filepath.Join(root, "conf/sub"), 0o700) })
	change("a renamed file", func() { os.Rename(filepath.Join(root, "conf/a"), filepath.Join(root, "conf/a2")) })
	change("a new empty file", func() { os.WriteFile(filepath.Join(root, "conf/empty"), nil, 0o644) })
	change("a new empty dir", func() { os.Mkdir(filepath.Join(root, "conf/emptydir"), 0o755) })

	// The key is of what was read at Load, not of the files now.
	s := load(t, root, body)
	k1 := s.Key("x")
	os.WriteFile(filepath.Join(root, "ci/motd"), []byte("changed later\n"), 0o644)
	if s.Key("x") != k1 {
		t.Error("the key followed a file changed after Load")
	}
}

func TestLayoutLines(t *testing.T) {
	data := []byte(`# comment with key = "no"
base = "a" # base = "b"
run = [
  """
x = 1
[[copy]]
""",
  'two', "three\"", # four
  '''five''',
]
[[copy]]
src = "s1"
[[copy]]
  src = 's2'
dst = "d2"
`)
	l := scanLayout(data)
	check := func(what string, got, want int) {
		t.Helper()
		if got != want {
			t.Errorf("%s: line %d, want %d", what, got, want)
		}
	}
	check("base", l.keyLine("", -1, "base"), 2)
	check("run", l.keyLine("", -1, "run"), 3)
	check("run[1]", l.elemLine("", -1, "run", 0), 4)
	check("run[2]", l.elemLine("", -1, "run", 1), 8)
	check("run[3]", l.elemLine("", -1, "run", 2), 8)
	check("run[4]", l.elemLine("", -1, "run", 3), 9)
	check("run[9]", l.elemLine("", -1, "run", 8), 3)
	check("x (in a string)", l.keyLine("", -1, "x"), 0)
	check("copy[1]", l.copyLine(0), 11)
	check("copy[1].src", l.keyLine("copy", 0, "src"), 12)
	check("copy[2]", l.copyLine(1), 13)
	check("copy[2].src", l.keyLine("copy", 1, "src"), 14)
	check("copy[2].dst", l.keyLine("copy", 1, "dst"), 15)
	for line, want := range map[int]string{2: "base", 5: "run", 6: "run", 10: "run", 11: "copy[1]", 15: "copy[2].dst", 1: ""} {
		if got := l.nameAt(line); got != want {
			t.Errorf("nameAt(%d) = %q, want %q", line, got, want)
		}
	}
}
