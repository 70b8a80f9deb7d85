package treecopy

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/securefs"
)

// entryInfo is what a copy must keep of one entry.
type entryInfo struct {
	kind  string
	perm  fs.FileMode
	mtime int64
	data  string // sha256 of a file, the target of a link
}

func describe(t *testing.T, root string) map[string]entryInfo {
	t.Helper()
	out := map[string]entryInfo{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		e := entryInfo{perm: fi.Mode().Perm() | fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky), mtime: fi.ModTime().UnixNano()}
		switch {
		case fi.IsDir():
			e.kind = "dir"
		case fi.Mode()&fs.ModeSymlink != 0:
			e.kind = "link"
			e.data, _ = os.Readlink(p)
			e.perm = 0 // a link's mode is not kept (Linux has none to set)
		default:
			e.kind = "file"
			b, _ := os.ReadFile(p)
			e.data = fmt.Sprintf("%x", sha256.Sum256(b))
		}
		out[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// makeTree is a tree with files of several modes, an empty directory, a
// restrictive directory, relative and absolute symlinks (one dangling) and
// sub-second modification times.
func makeTree(t *testing.T, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "src", "sub", "deep"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "src", "empty"), 0o755))
	files := map[string]fs.FileMode{"src/a.txt": 0o644, "src/run.sh": 0o755, "src/secret": 0o600, "src/sub/b.bin": 0o640, "src/sub/deep/c": 0o444}
	for name, mode := range files {
		p := filepath.Join(dir, name)
		must(os.WriteFile(p, bytes.Repeat([]byte(name), 1000), 0o600))
		must(os.Chmod(p, mode))
	}
	must(os.Symlink("a.txt", filepath.Join(dir, "src", "rel-link")))
	must(os.Symlink("/etc/hostname", filepath.Join(dir, "src", "sub", "abs-link")))
	must(os.Symlink("nowhere", filepath.Join(dir, "src", "dangling")))
	must(os.Chmod(filepath.Join(dir, "src", "sub", "deep"), 0o750))
	base := time.Date(2024, 3, 1, 12, 0, 0, 123456789, time.UTC)
	i := 0
	filepath.WalkDir(filepath.Join(dir, "src"), func(p string, d fs.DirEntry, err error) error {
		i++
		ts := base.Add(time.Duration(i) * time.Hour)
		if d.Type()&fs.ModeSymlink == 0 {
			os.Chtimes(p, ts, ts)
		}
		return nil
	})
	// Directories last: writing into one changes its time.
	for _, d := range []string{"src/sub/deep", "src/sub", "src/empty", "src"} {
		ts := base.Add(time.Duration(len(d)) * time.Minute)
		must(os.Chtimes(filepath.Join(dir, d), ts, ts))
	}
}

func roundTrip(t *testing.T, src, dst string) Stats {
	t.Helper()
	var buf bytes.Buffer
	var counted int64
	ps, err := Pack(&buf, src, func(n int64) { counted += n })
	if err != nil {
		t.Fatal(err)
	}
	if counted != ps.Bytes {
		t.Errorf("Pack counted %d bytes, wrote %d", counted, ps.Bytes)
	}
	us, err := Unpack(&buf, dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if us.Files != ps.Files || us.Dirs != ps.Dirs || us.Links != ps.Links || us.Bytes != ps.Bytes {
		t.Errorf("packed %+v, unpacked %+v", ps, us)
	}
	return us
}

// TestRoundTrip: a tree copied to a new name keeps every file's bytes,
// every permission bit and modification time (to the nanosecond) of files
// and directories, and its symlinks as links with their targets.
func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir)
	st := roundTrip(t, filepath.Join(dir, "src"), filepath.Join(dir, "copy"))
	if st.Files != 5 || st.Dirs != 4 || st.Links != 3 {
		t.Errorf("stats %+v", st)
	}
	want, got := describe(t, filepath.Join(dir, "src")), describe(t, filepath.Join(dir, "copy"))
	if len(want) != len(got) {
		t.Errorf("%d entries, want %d", len(got), len(want))
	}
	for k, w := range want {
		if g := got[k]; g != w {
			t.Errorf("%s: got %+v, want %+v", k, g, w)
		}
	}
}

// TestUnpackPlacement: like cp, into an existing directory, as a new name,
// a file over a file; a directory onto a file and a missing parent are
// refused with one line.
func TestUnpackPlacement(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir)
	src := filepath.Join(dir, "src")
	into := filepath.Join(dir, "into")
	os.Mkdir(into, 0o755)
	roundTrip(t, src, into)
	if _, err := os.Stat(filepath.Join(into, "src", "sub", "deep", "c")); err != nil {
		t.Errorf("into a directory: %v", err)
	}
	file := filepath.Join(dir, "dest.txt")
	os.WriteFile(file, []byte("old"), 0o600)
	roundTrip(t, filepath.Join(src, "a.txt"), file)
	if b, _ := os.ReadFile(file); !bytes.HasPrefix(b, []byte("src/a.txt")) {
		t.Errorf("file over a file: %q", b[:min(len(b), 20)])
	}
	for _, tc := range []struct{ src, dst, want string }{
		{src, file, "cannot copy directory src onto file " + file},
		{src, filepath.Join(dir, "no", "such"), filepath.Join(dir, "no") + ": no such directory (the parent of " + filepath.Join(dir, "no", "such") + ")"},
		{src, filepath.Join(dir, "nodir") + "/", filepath.Join(dir, "nodir") + "/: no such directory"},
	} {
		var buf bytes.Buffer
		if _, err := Pack(&buf, tc.src, nil); err != nil {
			t.Fatal(err)
		}
		_, err := Unpack(&buf, tc.dst, Options{})
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s → %s: %v, want %q", tc.src, tc.dst, err, tc.want)
		}
	}
	if b, _ := os.ReadFile(file); !bytes.HasPrefix(b, []byte("src/a.txt")) {
		t.Error("the refused copy changed the file")
	}
	if _, err := Pack(&bytes.Buffer{}, filepath.Join(dir, "missing"), nil); err == nil || !strings.Contains(err.Error(), "no such file or directory") {
		t.Errorf("Pack of a missing path: %v", err)
	}
}

type tarEntry struct {
	name, link string
	typ        byte
	mode       int64
	body       string
	size       int64 // declared size when body is empty
}

func hostileStream(t *testing.T, es ...tarEntry) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		size := int64(len(e.body))
		if e.size > 0 {
			size = e.size
		}
		if e.mode == 0 {
			e.mode = 0o644
		}
		hdr := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: size, ModTime: time.Unix(1700000000, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if e.body != "" {
			tw.Write([]byte(e.body))
		}
		if e.size > 0 {
			tw.Flush() // the body is missing: the stream ends short
			return &buf
		}
	}
	tw.Close()
	return &buf
}

// TestUnpackHostile: streams a hostile guest could send are refused, and
// nothing is written outside the destination: names with "..", absolute
// names, entries outside the first one, a file through a symlinked
// directory, devices, hard links, streams past the byte or entry limits.
// A symlink replaced by a file leaves the link's target alone; setuid and
// setgid bits are cleared on the host.
func TestUnpackHostile(t *testing.T) {
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	os.WriteFile(victim, []byte("untouched"), 0o600)
	dir := func(name string) tarEntry { return tarEntry{name: name, typ: tar.TypeDir, mode: 0o755} }
	file := func(name, body string) tarEntry { return tarEntry{name: name, typ: tar.TypeReg, body: body} }
	for _, tc := range []struct {
		name    string
		entries []tarEntry
		lim     Limits
		want    string
	}{
		{"dotdot", []tarEntry{dir("top/"), file("top/../../evil", "x")}, Limits{}, `entry "top/../../evil": not a clean relative name`},
		{"absolute", []tarEntry{dir("top/"), file("/etc/evil", "x")}, Limits{}, `entry "/etc/evil": not a clean relative name`},
		{"first is a path", []tarEntry{file("a/b", "x")}, Limits{}, `the stream's first entry "a/b" is not a single name`},
		{"outside the top", []tarEntry{dir("top/"), file("other", "x")}, Limits{}, `entry "other" is outside top, the stream's first entry`},
		{"through a symlink", []tarEntry{dir("top/"), {name: "top/l", typ: tar.TypeSymlink, link: outside}, file("top/l/victim", "pwned")}, Limits{}, "dst/l: "},
		{"device", []tarEntry{dir("top/"), {name: "top/sda", typ: tar.TypeBlock}}, Limits{}, `entry "top/sda": type "4" is not a file, a directory or a symlink`},
		{"hard link", []tarEntry{dir("top/"), {name: "top/h", typ: tar.TypeLink, link: "/etc/shadow"}}, Limits{}, `entry "top/h": type "1" is not a file`},
		{"too many bytes", []tarEntry{dir("top/"), file("top/a", "12345"), file("top/b", "678")}, Limits{MaxBytes: 7, MaxEntries: 10}, "the copy is larger than 7 bytes, the limit (at top/b)"},
		{"declared size", []tarEntry{dir("top/"), {name: "top/huge", typ: tar.TypeReg, size: 1 << 40}}, Limits{MaxBytes: 1 << 30, MaxEntries: 10}, "the copy is larger than 1073741824 bytes"},
		{"too many entries", []tarEntry{dir("top/"), file("top/a", "1"), file("top/b", "2")}, Limits{MaxBytes: 100, MaxEntries: 2}, "the copy holds more than 2 entries, the limit"},
		{"dir over file", []tarEntry{dir("top/"), file("top/x", "1"), dir("top/x/")}, Limits{}, "exists and is not a directory"},
		{"file over dir", []tarEntry{dir("top/"), dir("top/d/"), file("top/d", "1")}, Limits{}, "cannot replace directory"},
		{"empty", nil, Limits{}, "the copy stream is empty"},
	} {
		// Both resolvers: openat2, and the component walk used where
		// openat2 is refused.
		for _, walk := range []bool{false, true} {
			restore := func() {}
			if walk {
				restore = securefs.ForceComponentWalk()
			}
			dst := filepath.Join(t.TempDir(), "dst")
			_, err := Unpack(hostileStream(t, tc.entries...), dst, Options{Limits: tc.lim})
			restore()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s (walk %v): %v, want %q", tc.name, walk, err, tc.want)
			}
		}
		if b, _ := os.ReadFile(victim); string(b) != "untouched" {
			t.Fatalf("%s: the file outside was written: %q", tc.name, b)
		}
		if ents, _ := os.ReadDir(outside); len(ents) != 1 {
			t.Fatalf("%s: something was created outside: %v", tc.name, ents)
		}
	}

	// A link to the victim, then a file of the same name: the link is
	// replaced, its target untouched.
	dst := filepath.Join(t.TempDir(), "dst")
	_, err := Unpack(hostileStream(t, dir("top/"), tarEntry{name: "top/f", typ: tar.TypeSymlink, link: victim},
		tarEntry{name: "top/f", typ: tar.TypeReg, body: "mine", mode: 0o6755}), dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(filepath.Join(dst, "f"))
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("the link was not replaced by a file: %v %v", fi, err)
	}
	if fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid) != 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("mode %v: setuid/setgid must be cleared on the host", fi.Mode())
	}
	if b, _ := os.ReadFile(victim); string(b) != "untouched" {
		t.Fatalf("the link's target was written: %q", b)
	}
}

// TestPackSkipsSpecialFiles: a socket in the tree is left out and named.
func TestPackSkipsSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.Mkdir(src, 0o755)
	os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644)
	l, err := net.Listen("unix", filepath.Join(src, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var buf bytes.Buffer
	st, err := Pack(&buf, src, nil)
	if err != nil || st.Files != 1 || len(st.Skipped) != 1 || !strings.HasSuffix(st.Skipped[0], "/sock") {
		t.Fatalf("%+v %v", st, err)
	}
	if _, err := Pack(&buf, "/", nil); err == nil || !strings.Contains(err.Error(), "cannot copy the root directory") {
		t.Errorf("Pack of /: %v", err)
	}
}

// TestGuestMain: the agent's cp mode packs to stdout and unpacks from
// stdin (setuid kept: it runs as the guest's root), and refuses bad
// arguments with exit 2.
func TestGuestMain(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir)
	os.Chmod(filepath.Join(dir, "src", "run.sh"), 0o755|fs.ModeSetuid)
	var stream, stderr bytes.Buffer
	if code := GuestMain([]string{"pack", filepath.Join(dir, "src")}, nil, &stream, &stderr); code != 0 {
		t.Fatalf("pack: %d %s", code, stderr.String())
	}
	if code := GuestMain([]string{"unpack", filepath.Join(dir, "out")}, &stream, nil, &stderr); code != 0 {
		t.Fatalf("unpack: %d %s", code, stderr.String())
	}
	if fi, err := os.Stat(filepath.Join(dir, "out", "run.sh")); err != nil || fi.Mode()&fs.ModeSetuid == 0 {
		t.Errorf("the guest end keeps setuid: %v %v", fi.Mode(), err)
	}
	stderr.Reset()
	if code := GuestMain([]string{"pack", filepath.Join(dir, "nope")}, nil, &bytes.Buffer{}, &stderr); code != 1 || !strings.HasPrefix(stderr.String(), "banger-agent: cp: lstat ") {
		t.Errorf("missing path: %d %q", code, stderr.String())
	}
	if code := GuestMain([]string{"frob", "x"}, nil, nil, &stderr); code != 2 {
		t.Errorf("bad mode: exit %d", code)
	}
}
