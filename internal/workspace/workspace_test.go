package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

func sh(t *testing.T, dir, script string) string {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@e", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@e", "GIT_CONFIG_GLOBAL=/dev/null")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return string(out)
}

// fixture: tracked (one modified, one deleted), untracked, ignored files.
func fixture(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	dir := filepath.Join(t.TempDir(), "myrepo")
	os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
	sh(t, dir, `git init -q -b main && printf 'v1\n' > a.txt && printf 'b\n' > sub/b.txt && printf 'd\n' > d.txt &&
		printf '.env\n' > .gitignore && git add -A && git commit -qm one &&
		printf 'v2\n' > a.txt && rm d.txt && printf 'u\n' > u.txt && printf 'SECRET=1\n' > .env`)
	return dir
}

func names(t *testing.T, w *Workspace) []string {
	t.Helper()
	var buf bytes.Buffer
	if err := w.WriteTar(context.Background(), &buf, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&buf)
	var out []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(h.Name, ".git/") {
			out = append(out, h.Name)
		}
	}
	sort.Strings(out)
	return out
}

func TestTrackedOnlyByDefault(t *testing.T) {
	dir := fixture(t)
	w, err := Inspect(context.Background(), filepath.Join(dir, "sub"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if w.Root != dir || w.Name != "myrepo" || len(w.Head) != 40 || w.SkippedUntracked != 1 || w.Mode != "tracked" {
		t.Fatalf("%+v", w)
	}
	if got := strings.Join(names(t, w), " "); got != ".gitignore a.txt sub/b.txt" {
		t.Fatalf("tar has %q (the deleted d.txt, untracked u.txt and ignored .env must be absent)", got)
	}
}

func TestIncludeUntrackedNeverIgnored(t *testing.T) {
	dir := fixture(t)
	w, err := Inspect(context.Background(), dir, Options{IncludeUntracked: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names(t, w), " "); got != ".gitignore a.txt sub/b.txt u.txt" {
		t.Fatalf("tar has %q", got)
	}
}

// extract writes w as the guest would receive it and runs the guest script
// (with this host's git standing in for the guest's).
func extract(t *testing.T, w *Workspace, o WriteOptions) string {
	t.Helper()
	var buf bytes.Buffer
	if err := w.WriteTar(context.Background(), &buf, o); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "guest")
	os.MkdirAll(dst, 0o755)
	cmd := exec.Command("tar", "-x", "-C", dst)
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	cmd = exec.Command("sh", "-c", w.GuestScript(o), "sh", dst, w.Opts.Branch)
	cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("guest script: %v %s", err, out)
	}
	return dst
}

func TestGitStatusMatchesAfterExtraction(t *testing.T) {
	for _, gc := range []bool{false, true} {
		t.Run(fmt.Sprintf("guest-checkout=%v", gc), func(t *testing.T) {
			dir := fixture(t)
			w, err := Inspect(context.Background(), dir, Options{IncludeUntracked: true})
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(w.Changed, " ") != "a.txt u.txt" || strings.Join(w.Deleted, " ") != "d.txt" {
				t.Fatalf("changed %q deleted %q", w.Changed, w.Deleted)
			}
			dst := extract(t, w, WriteOptions{GuestCheckout: gc})
			host := sh(t, dir, "git status --porcelain")
			guest := sh(t, dst, "git status --porcelain")
			if host != guest {
				t.Fatalf("git status differs:\nhost:\n%s\nguest:\n%s", host, guest)
			}
			if h, g := sh(t, dir, "git diff"), sh(t, dst, "git diff"); h != g {
				t.Fatalf("git diff differs:\n%s\n---\n%s", h, g)
			}
			if b, _ := os.ReadFile(filepath.Join(dst, "sub", "b.txt")); string(b) != "b\n" {
				t.Fatalf("unchanged file sub/b.txt = %q", b)
			}
			if _, err := os.Stat(filepath.Join(dst, ".git", deletedList)); err == nil {
				t.Fatal("the deletion list was left in .git")
			}
			if !strings.Contains(sh(t, dst, "git log --oneline"), "one") {
				t.Fatal("no history in the copy")
			}
		})
	}
}

func TestGuestCheckoutSendsOnlyChangedFiles(t *testing.T) {
	dir := fixture(t)
	w, err := Inspect(context.Background(), dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := w.WriteTar(context.Background(), &buf, WriteOptions{GuestCheckout: true}); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&buf)
	var got []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		if !strings.HasPrefix(h.Name, ".git/") {
			got = append(got, h.Name)
		}
	}
	if strings.Join(got, " ") != "a.txt" {
		t.Fatalf("working-tree entries %q, want only the modified a.txt", got)
	}
}

func TestBranchAndFrom(t *testing.T) {
	dir := fixture(t)
	sh(t, dir, "git stash -q -u && printf 'v3\n' > a.txt && git commit -qam two && git tag v-two && printf 'v4\n' > a.txt && git commit -qam three")
	if _, err := Inspect(context.Background(), dir, Options{From: "v-two"}); err == nil || !strings.Contains(err.Error(), "--from needs --branch") {
		t.Fatalf("--from without --branch: %v", err)
	}
	if _, err := Inspect(context.Background(), dir, Options{Branch: "bad..name"}); err == nil {
		t.Fatal("bad branch name accepted")
	}
	if _, err := Inspect(context.Background(), dir, Options{Branch: "x", From: "nope"}); err == nil || !strings.Contains(err.Error(), "not a commit") {
		t.Fatalf("bad --from: %v", err)
	}
	w, err := Inspect(context.Background(), dir, Options{Branch: "try", From: "v-two"})
	if err != nil {
		t.Fatal(err)
	}
	dst := extract(t, w, WriteOptions{GuestCheckout: true})
	if b, _ := os.ReadFile(filepath.Join(dst, "a.txt")); string(b) != "v3\n" {
		t.Fatalf("a.txt = %q, want v-two's v3", b)
	}
	if br := strings.TrimSpace(sh(t, dst, "git branch --show-current")); br != "try" {
		t.Fatalf("branch %q", br)
	}
	if st := sh(t, dst, "git status --porcelain"); st != "" {
		t.Fatalf("status not clean: %q", st)
	}
	// --branch alone: the working tree, on a new branch.
	sh(t, dir, "printf 'wip\n' > a.txt")
	w, _ = Inspect(context.Background(), dir, Options{Branch: "wip"})
	dst = extract(t, w, WriteOptions{GuestCheckout: true})
	if br := strings.TrimSpace(sh(t, dst, "git branch --show-current")); br != "wip" {
		t.Fatalf("branch %q", br)
	}
	if st := sh(t, dst, "git status --porcelain"); st != " M a.txt\n" {
		t.Fatalf("status %q", st)
	}
}

func TestFullCopyWithSubmodule(t *testing.T) {
	dir := fixture(t)
	sub := fixture(t)
	sh(t, dir, "git -c protocol.file.allow=always submodule --quiet add "+sub+" lib && git commit -qm sub")
	w, err := Inspect(context.Background(), dir, Options{FullCopy: true, IncludeUntracked: true})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(w.Mode, "+full-copy") {
		t.Fatalf("mode %q", w.Mode)
	}
	dst := extract(t, w, WriteOptions{GuestCheckout: true})
	if b, _ := os.ReadFile(filepath.Join(dst, "lib", "sub", "b.txt")); string(b) != "b\n" {
		t.Fatalf("submodule file lib/sub/b.txt = %q", b)
	}
	if h, g := sh(t, dir, "git status --porcelain"), sh(t, dst, "git status --porcelain"); h != g {
		t.Fatalf("git status differs:\nhost:\n%s\nguest:\n%s", h, g)
	}
	if h, g := sh(t, dir, "git log --oneline | wc -l"), sh(t, dst, "git log --oneline | wc -l"); h != g {
		t.Fatalf("history differs: %s vs %s", h, g)
	}
}

func TestRefusals(t *testing.T) {
	ctx := context.Background()
	if _, err := Inspect(ctx, t.TempDir(), Options{}); err == nil || !strings.Contains(err.Error(), "not inside a git repository") {
		t.Fatalf("plain dir: %v", err)
	}
	bare := filepath.Join(t.TempDir(), "bare.git")
	sh(t, filepath.Dir(bare), "git init -q --bare "+bare)
	if _, err := Inspect(ctx, bare, Options{}); err == nil || !strings.Contains(err.Error(), "bare") {
		t.Fatalf("bare: %v", err)
	}
	dir := fixture(t)
	sub := fixture(t)
	sh(t, dir, "git -c protocol.file.allow=always submodule --quiet add "+sub+" lib && git commit -qm sub")
	_, err := Inspect(ctx, dir, Options{})
	if err == nil || !strings.Contains(err.Error(), "submodules (lib)") || !strings.Contains(err.Error(), "--full-copy") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("submodule: %v", err)
	}
}
