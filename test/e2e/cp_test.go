package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

// cpTree makes a 20 MiB tree: files of several modes and sizes (one empty),
// nested and empty directories, a restrictive directory, and relative,
// absolute and dangling symlinks, with modification times in the past.
func cpTree(t *testing.T, root string) {
	t.Helper()
	for _, d := range []string{"src/a/b/c", "src/empty", "src/private"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(rel string, size int, mode fs.FileMode) {
		b := make([]byte, size)
		rand.Read(b)
		p := filepath.Join(root, rel)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
	}
	for i := 0; i < 18; i++ {
		write(fmt.Sprintf("src/a/blob%02d.bin", i), 1<<20, 0o644)
	}
	write("src/a/b/run.sh", 2<<20-123, 0o755)
	write("src/a/b/c/key", 4096, 0o600)
	write("src/private/notes", 777, 0o640)
	write("src/empty-file", 0, 0o444)
	os.Symlink("../blob00.bin", filepath.Join(root, "src/a/b/rel-link"))
	os.Symlink("/etc/hostname", filepath.Join(root, "src/abs-link"))
	os.Symlink("does-not-exist", filepath.Join(root, "src/dangling"))
	os.Chmod(filepath.Join(root, "src/private"), 0o700)
	os.Chmod(filepath.Join(root, "src/a/b/c"), 0o750)
	old := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	filepath.WalkDir(filepath.Join(root, "src"), func(p string, d fs.DirEntry, err error) error {
		if d.Type()&fs.ModeSymlink == 0 && !d.IsDir() {
			os.Chtimes(p, old, old)
		}
		return nil
	})
}

// treeLines lists a tree as "path type mode sha256-or-target" lines, sorted:
// what a copy must keep (mtimes are compared separately).
func treeLines(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case fi.IsDir():
			out = append(out, fmt.Sprintf("%s dir %o", rel, fi.Mode().Perm()))
		case fi.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			out = append(out, fmt.Sprintf("%s link %s", rel, l))
		default:
			b, _ := os.ReadFile(p)
			out = append(out, fmt.Sprintf("%s file %o %x %d", rel, fi.Mode().Perm(), sha256.Sum256(b), fi.ModTime().Unix()))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// TestVMCpTreeInAndOut ([P12]): a 20 MiB tree copied into a VM and back
// out keeps every file's sha256, every mode and modification time, and its
// symlinks as links; the guest sees the same files, modes and sha256s. A
// missing path and a directory onto a file are one-line errors.
func TestVMCpTreeInAndOut(t *testing.T) {
	v := newVMEnv(t)
	v.must("vm", "create", "--name", "cp", "--label", "purpose=copy", "--label", "team=qa")

	// Labels ([P12]): shown, filtered on, changed and removed.
	var vms []api.VM
	json.Unmarshal([]byte(v.must("vm", "list", "--json", "--filter", "label=purpose=copy", "--filter", "state=running")), &vms)
	if len(vms) != 1 || vms[0].Name != "cp" || vms[0].Labels["team"] != "qa" {
		t.Fatalf("vm list --filter label=purpose=copy: %+v", vms)
	}
	if out := v.must("vm", "list", "--filter", "label=purpose=other"); strings.Contains(out, "cp ") {
		t.Errorf("a filter that matches nothing listed: %q", out)
	}
	if out := v.must("vm", "set", "cp", "--label", "team-", "--label", "stage=2"); out != "cp: 1 vcpu, 256 MiB, labels purpose=copy,stage=2\n" {
		t.Errorf("vm set --label: %q", out)
	}
	if show := v.must("vm", "show", "cp"); !regexp.MustCompile(`(?m)^labels:\s+purpose=copy,stage=2$`).MatchString(show) {
		t.Errorf("vm show lacks the labels:\n%s", show)
	}
	host := t.TempDir()
	cpTree(t, host)
	want := treeLines(t, filepath.Join(host, "src"))

	t0 := time.Now()
	v.must("vm", "cp", filepath.Join(host, "src"), "cp:/root/")
	in := time.Since(t0)
	// The guest's view: sha256 and mode of every file, every link's target.
	out := v.must("vm", "exec", "cp", "--", "sh", "-c",
		`cd /root/src && find . -type f -exec sha256sum {} \; | sort -k2; find . -type f -exec stat -c '%n %a %Y' {} \; | sort; find . -type l -exec readlink {} \; | sort; find . -type d -exec stat -c '%n %a' {} \; | sort`)
	for _, l := range want {
		f := strings.Fields(l)
		switch f[1] {
		case "file":
			if !strings.Contains(out, f[3]+"  ./"+f[0]+"\n") || !strings.Contains(out, "./"+f[0]+" "+f[2]+" "+f[4]+"\n") {
				t.Errorf("guest lacks %s (sha256 %s, mode %s, mtime %s)", f[0], f[3], f[2], f[4])
			}
		case "link":
			if !strings.Contains(out, f[2]+"\n") {
				t.Errorf("guest lacks the link %s -> %s", f[0], f[2])
			}
		case "dir":
			name := "./" + f[0]
			if f[0] == "." {
				name = "."
			}
			if !strings.Contains(out, name+" "+f[2]+"\n") {
				t.Errorf("guest directory %s: want mode %s", f[0], f[2])
			}
		}
	}
	if t.Failed() {
		t.Fatalf("guest view:\n%s", out)
	}

	t0 = time.Now()
	v.must("vm", "cp", "cp:/root/src", filepath.Join(host, "back"))
	t.Logf("20 MiB tree: in %v, out %v (tiny, TCG)", in.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	got := treeLines(t, filepath.Join(host, "back"))
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("copied back:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	r := v.banger("vm", "cp", "cp:/root/nope", filepath.Join(host, "x"))
	if r.code != 1 || r.stderr != "banger: vm cp: cp: lstat /root/nope: no such file or directory\n" {
		t.Errorf("missing guest path: exit %d, %q", r.code, r.stderr)
	}
	r = v.banger("vm", "cp", filepath.Join(host, "src"), "cp:/root/src/a/blob00.bin")
	if r.code != 1 || r.stderr != "banger: vm cp: cp: cannot copy directory src onto file /root/src/a/blob00.bin\n" {
		t.Errorf("directory onto a file: exit %d, %q", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(host, "x")); !os.IsNotExist(err) {
		t.Errorf("a failed copy left %s behind: %v", filepath.Join(host, "x"), err)
	}
}
