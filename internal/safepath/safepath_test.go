package safepath

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// tree builds, under a fresh temp dir:
//
//	root/                      the allowed root
//	root/dir/file              regular file
//	root/dir/sub/              directory
//	root/linkdir -> dir        symlink to a directory (middle component)
//	root/dir/linkfile -> file  symlink to a file (final component)
//	root/dir/dangling -> nope  dangling symlink
//	root/fifo                  named pipe
//	root2/                     a sibling whose name extends root's
//	outside/secret             a file outside the root
//	realroot -> root           a symlink standing in for a root
func tree(t *testing.T) (base string) {
	t.Helper()
	// EvalSymlinks: TMPDIR itself might sit below a symlink, which Under
	// would rightly refuse.
	base, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(base, "root/dir/sub"), 0o755))
	must(os.WriteFile(filepath.Join(base, "root/dir/file"), []byte("x"), 0o644))
	must(os.Symlink("dir", filepath.Join(base, "root/linkdir")))
	must(os.Symlink("file", filepath.Join(base, "root/dir/linkfile")))
	must(os.Symlink("nope", filepath.Join(base, "root/dir/dangling")))
	must(syscall.Mkfifo(filepath.Join(base, "root/fifo"), 0o600))
	must(os.MkdirAll(filepath.Join(base, "root2"), 0o755))
	must(os.MkdirAll(filepath.Join(base, "outside"), 0o755))
	must(os.WriteFile(filepath.Join(base, "outside/secret"), []byte("s"), 0o600))
	must(os.Symlink("root", filepath.Join(base, "realroot")))
	return base
}

func TestUnder(t *testing.T) {
	base := tree(t)
	root := base + "/root"
	cases := []struct {
		name  string
		path  string
		roots []string
		want  string // "" = ok, else a substring of the error
	}{
		{"existing file", root + "/dir/file", nil, ""},
		{"existing dir", root + "/dir/sub", nil, ""},
		{"direct child", root + "/dir", nil, ""},
		{"new file in existing dir", root + "/dir/new.ext4", nil, ""},
		{"new dir in existing dir", root + "/dir/sub/newdir", nil, ""},
		{"fifo is not a symlink", root + "/fifo", nil, ""},
		{"second root matches", base + "/outside/secret", []string{root, base + "/outside"}, ""},
		{"root slash", root + "/dir/file", []string{"/"}, ""},

		{"root itself", root, nil, "is not strictly under"},
		{"slash itself", "/", []string{"/"}, "is not strictly under"},
		{"sibling with root as string prefix", base + "/root2/x", nil, "is not strictly under"},
		{"sibling itself", base + "/root2", nil, "is not strictly under"},
		{"outside", base + "/outside/secret", nil, "is not strictly under"},
		{"parent of root", base, nil, "is not strictly under"},
		{"not under any of several", base + "/outside/secret", []string{root, base + "/root2"}, "is not strictly under any of"},

		{"relative", "root/dir/file", nil, "is not absolute"},
		{"dot relative", "./root/dir/file", nil, "is not absolute"},
		{"empty", "", nil, "empty path"},
		{"dotdot escaping", root + "/../outside/secret", nil, "contains a '..' component"},
		{"dotdot staying inside", root + "/dir/../dir/file", nil, "contains a '..' component"},
		{"trailing dotdot", root + "/dir/..", nil, "contains a '..' component"},
		{"dot component", root + "/./dir/file", nil, "contains a '.' component"},
		{"double slash", root + "//dir/file", nil, "contains '//'"},
		{"trailing slash", root + "/dir/", nil, "ends in '/'"},
		{"nul byte", root + "/dir/fi\x00le", nil, "NUL"},
		{"dotdot-looking name is fine", root + "/dir/..file", nil, ""},

		{"symlink middle component", root + "/linkdir/file", nil, "component " + root + "/linkdir is a symlink"},
		{"symlink middle component, new file", root + "/linkdir/new", nil, "component " + root + "/linkdir is a symlink"},
		{"symlink final component", root + "/dir/linkfile", nil, "component " + root + "/dir/linkfile is a symlink"},
		{"dangling symlink final component", root + "/dir/dangling", nil, "component " + root + "/dir/dangling is a symlink"},
		{"root is a symlink", base + "/realroot/dir/file", []string{base + "/realroot"}, "component " + base + "/realroot is a symlink"},
		{"missing middle component", root + "/nodir/new", nil, "component " + root + "/nodir does not exist"},
		{"file as middle component", root + "/dir/file/x", nil, "component " + root + "/dir/file is not a directory (regular file)"},
		{"fifo as middle component", root + "/fifo/x", nil, "is not a directory (named pipe)"},

		{"relative root", root + "/dir/file", []string{"root"}, "root \"root\" is not absolute"},
		{"unclean root", root + "/dir/file", []string{root + "/"}, "ends in '/'"},
		{"no roots", root + "/dir/file", []string{}, "no allowed roots"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			roots := c.roots
			if roots == nil {
				roots = []string{root}
			}
			err := Under(c.path, roots...)
			check(t, err, c.want)
			if err != nil && c.path != "" && !strings.Contains(err.Error(), c.path) && !strings.Contains(c.path, "\x00") {
				t.Errorf("error does not name the path %q: %v", c.path, err)
			}
		})
	}
}

func TestRegularFile(t *testing.T) {
	base := tree(t)
	root := base + "/root"
	cases := []struct {
		name, path, want string
	}{
		{"regular", root + "/dir/file", ""},
		{"directory", root + "/dir", "is not a regular file (directory)"},
		{"symlink to file", root + "/dir/linkfile", "is not a regular file (symlink)"},
		{"dangling symlink", root + "/dir/dangling", "is not a regular file (symlink)"},
		{"fifo", root + "/fifo", "is not a regular file (named pipe)"},
		{"device", "/dev/null", "is not a regular file (character device)"},
		{"missing", root + "/dir/missing", "does not exist"},
		{"empty", "", "empty path"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := RegularFile(c.path)
			check(t, err, c.want)
			if err != nil && c.path != "" && !strings.Contains(err.Error(), c.path) {
				t.Errorf("error does not name the path: %v", err)
			}
		})
	}
}

func TestIfaceName(t *testing.T) {
	tapPre := []string{"tap-fc-", "tap-pool-"}
	cases := []struct {
		name     string
		iface    string
		prefixes []string
		want     string
	}{
		{"tap", "tap-fc-0a1b2c3d", tapPre, ""},
		{"pool", "tap-pool-7", tapPre, ""},
		{"exactly 15", "tap-fc-12345678", tapPre, ""},
		{"bridge exact", "br-fc", []string{"br-fc"}, ""},
		{"underscore and caps", "br-fc_A", []string{"br-fc"}, ""},

		{"empty", "", tapPre, "empty interface name"},
		{"16 chars", "tap-fc-123456789", tapPre, "is 16 characters long, at most 15"},
		{"wrong prefix", "eth0", tapPre, `does not start with any of "tap-fc-", "tap-pool-"`},
		{"wrong prefix single", "docker0", []string{"br-fc"}, `does not start with "br-fc"`},
		{"prefix in the middle", "xtap-fc-1", tapPre, "does not start with"},
		{"slash", "tap-fc-a/b", tapPre, `contains "/"`},
		{"dot", "tap-fc-a.b", tapPre, `contains "."`},
		{"dotdot", "..", tapPre, `contains "."`},
		{"space", "tap-fc- 1", tapPre, `contains " "`},
		{"colon", "tap-fc-1:0", tapPre, `contains ":"`},
		{"percent template", "tap-fc-%d", tapPre, `contains "%"`},
		{"non-ascii", "tap-fc-é", tapPre, "only letters, digits"},
		{"newline", "tap-fc-\n", tapPre, "only letters, digits"},
		{"no prefixes", "tap-fc-1", nil, "no allowed prefixes"},
		{"empty prefix matches nothing", "eth0", []string{""}, "does not start with"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := IfaceName(c.iface, c.prefixes...)
			check(t, err, c.want)
			if err != nil && c.iface != "" && !strings.Contains(err.Error(), c.iface) && !strings.ContainsAny(c.iface, "\n\x00é") {
				t.Errorf("error does not name the interface: %v", err)
			}
		})
	}
}

func check(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Fatalf("no error, want one containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Fatalf("error %q does not contain %q", err, want)
	}
	if err != nil && strings.Contains(err.Error(), "\n") {
		t.Fatalf("error is not one line: %q", err)
	}
}
