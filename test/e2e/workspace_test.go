package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/guestbuild"
)

func gitFixture(t testing.TB, dir, script string) string {
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

// newDebianEnv is a VM environment whose debian-bookworm image (which has
// git) is built beforehand, outside the test's network namespace.
func newDebianEnv(t testing.TB) *vmEnv {
	t.Helper()
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		t.Skip("mmdebstrap not installed: the debian-bookworm image (with git) cannot be built")
	}
	v := newVMEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if _, err := guestbuild.EnsureDebian(ctx, guestOpts()); err != nil {
		t.Fatalf("debian image: %v", err)
	}
	return v
}

// TestWorkspaceRun copies a repository with tracked, untracked and ignored
// files into a Debian guest (which has git) and runs commands in it.
func TestWorkspaceRun(t *testing.T) {
	v := newDebianEnv(t)
	repo := filepath.Join(v.home, "proj")
	os.MkdirAll(filepath.Join(repo, "sub"), 0o755)
	gitFixture(t, repo, `git init -q -b main && printf 'v1\n' > a.txt && printf 'b\n' > sub/b.txt && printf 'd\n' > d.txt &&
		printf '.env\n' > .gitignore && git add -A && git commit -qm one &&
		printf 'v2\n' > a.txt && rm d.txt && printf 'u\n' > u.txt && printf 'SECRET=1\n' > .env`)
	list := `find . -path ./.git -prune -o -type f -print | sort`

	// --dry-run lists and creates nothing.
	out := v.must("vm", "run", "--dry-run", repo)
	if !strings.HasPrefix(out, "mode: tracked; 3 file(s)") || strings.Contains(out, ".env") || strings.Contains(out, "u.txt") {
		t.Fatalf("dry run: %s", out)
	}
	if vms := strings.TrimSpace(v.must("vm", "list", "--json")); vms != "[]" {
		t.Fatalf("--dry-run created a VM: %s", vms)
	}

	// Default: tracked files only (the deleted one stays deleted); the
	// command's exit code comes back.
	r := v.banger("vm", "run", "--rm", "--image", "debian-bookworm-minimal", repo, "--", "sh", "-c", list+"; pwd; exit 42")
	if r.code != 42 {
		t.Fatalf("exit %d, want 42: %s", r.code, r.stderr)
	}
	if got := strings.TrimSpace(r.stdout); got != "./.gitignore\n./a.txt\n./sub/b.txt\n/root/proj" {
		t.Fatalf("default copy:\n%s", got)
	}
	if !strings.Contains(r.stderr, "1 untracked file(s) not copied") {
		t.Fatalf("no notice of the skipped untracked file: %q", r.stderr)
	}

	// --include-untracked adds u.txt, never .env; git status matches the host's.
	host := gitFixture(t, repo, "git status --porcelain")
	r = v.banger("vm", "run", "--rm", "--image", "debian-bookworm-minimal", "--include-untracked", repo, "--", "sh", "-c", list+"; git status --porcelain; exit 1")
	if r.code != 1 {
		t.Fatalf("exit %d, want 1: %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, "./u.txt\n") || strings.Contains(r.stdout, ".env") {
		t.Fatalf("untracked copy:\n%s", r.stdout)
	}
	if !strings.HasSuffix(r.stdout, host) {
		t.Fatalf("guest git status differs from the host's %q:\n%s", host, r.stdout)
	}

	// Exit 0, and a submodule repository is refused before anything is made.
	if r := v.banger("vm", "run", "--rm", "--image", "debian-bookworm-minimal", repo, "--", "git", "diff", "--quiet", "HEAD", "--", "sub"); r.code != 0 {
		t.Fatalf("exit %d, want 0: %s", r.code, r.stderr)
	}
	sub := filepath.Join(v.home, "lib")
	os.MkdirAll(sub, 0o755)
	gitFixture(t, sub, "git init -q && echo x > x && git add x && git commit -qm x")
	gitFixture(t, repo, "git -c protocol.file.allow=always submodule --quiet add "+sub+" lib && git commit -qm sub")
	r = v.banger("vm", "run", "--rm", repo, "--", "true")
	if r.code != 2 || !strings.Contains(r.stderr, "has git submodules (lib)") || strings.Count(r.stderr, "\n") != 1 {
		t.Fatalf("submodule repo: %d %q", r.code, r.stderr)
	}
	if vms := strings.TrimSpace(v.must("vm", "list", "--json")); vms != "[]" {
		t.Fatalf("VMs left: %s", vms)
	}
}

// TestWorkspaceExportRoundTrip: prepare, change and commit in the guest,
// export with --base-commit, git apply on the host → the same tree; and
// vm exec runs in the workspace and warns when the host HEAD moves.
func TestWorkspaceExportRoundTrip(t *testing.T) {
	v := newDebianEnv(t)
	repo := filepath.Join(v.home, "proj")
	os.MkdirAll(repo, 0o755)
	gitFixture(t, repo, `git init -q -b main && printf 'one\n' > a.txt && git add -A && git commit -qm one`)
	head := strings.TrimSpace(gitFixture(t, repo, "git rev-parse HEAD"))
	v.must("vm", "create", "--name", "ws", "--image", "debian-bookworm-minimal")
	if out := v.must("vm", "workspace", "prepare", "ws", repo); !strings.Contains(out, "prepared in ws:/root/proj") {
		t.Fatalf("prepare: %s", out)
	}
	if pwd := strings.TrimSpace(v.must("vm", "exec", "ws", "--", "pwd")); pwd != "/root/proj" {
		t.Fatalf("vm exec ran in %q", pwd)
	}
	v.must("vm", "exec", "ws", "--", "sh", "-c", `printf 'two\n' >> a.txt && printf 'new\n' > b.txt && git add -A &&
		git -c user.name=g -c user.email=g@e commit -qm guest && printf 'dirty\n' > c.txt && mkdir -p d && printf 'x\n' > d/e.txt`)
	statusBefore := v.must("vm", "exec", "ws", "--", "git", "status", "--porcelain")
	patch := filepath.Join(v.home, "guest.patch")
	v.must("vm", "workspace", "export", "ws", "--base-commit", head, "-o", patch)
	// Export touched nothing in the guest.
	if after := v.must("vm", "exec", "ws", "--", "git", "status", "--porcelain"); after != statusBefore {
		t.Fatalf("export changed the guest's status:\n%s\n---\n%s", statusBefore, after)
	}
	gitFixture(t, repo, "git apply "+patch)
	for f, want := range map[string]string{"a.txt": "one\ntwo\n", "b.txt": "new\n", "c.txt": "dirty\n", "d/e.txt": "x\n"} {
		b, err := os.ReadFile(filepath.Join(repo, f))
		if err != nil || string(b) != want {
			t.Errorf("%s on the host after git apply: %q %v", f, b, err)
		}
	}
	// The host moves on: vm exec warns.
	gitFixture(t, repo, "git add -A && git commit -qm host")
	r := v.banger("vm", "exec", "ws", "--", "true")
	if r.code != 0 || !strings.Contains(r.stderr, "moved since the workspace was prepared") {
		t.Fatalf("no HEAD-moved warning: %d %q", r.code, r.stderr)
	}
}

// TestWorkspaceModesAndShell: --full-copy carries submodules and all history;
// --branch/--from make a guest-only branch at another commit; a bare
// `vm run PATH` opens its shell in the repository.
func TestWorkspaceModesAndShell(t *testing.T) {
	v := newDebianEnv(t)
	repo := filepath.Join(v.home, "proj")
	lib := filepath.Join(v.home, "lib")
	os.MkdirAll(repo, 0o755)
	os.MkdirAll(lib, 0o755)
	gitFixture(t, lib, "git init -q -b main && echo x > x && git add x && git commit -qm x")
	gitFixture(t, repo, `git init -q -b main && printf 'v1\n' > a.txt && git add -A && git commit -qm one && git tag t1 &&
		printf 'v2\n' > a.txt && git commit -qam two &&
		git -c protocol.file.allow=always submodule --quiet add `+lib+` lib && git commit -qm sub && printf 'wip\n' > a.txt`)
	v.must("vm", "create", "--name", "ws", "--image", "debian-bookworm-minimal")

	// --full-copy: the submodule's files, the whole history, the same status.
	v.must("vm", "workspace", "prepare", "ws", repo, "--full-copy")
	out := v.must("vm", "exec", "ws", "--", "sh", "-c", "cat lib/x; git log --oneline | wc -l; git status --porcelain")
	if want := "x\n3\n" + gitFixture(t, repo, "git status --porcelain"); out != want {
		t.Fatalf("full copy: %q, want %q", out, want)
	}

	// --branch --from: t1's files on a guest-only branch; the host is untouched.
	v.must("vm", "workspace", "prepare", "ws", repo, "--branch", "try", "--from", "t1")
	out = v.must("vm", "exec", "ws", "--", "sh", "-c", "git branch --show-current; cat a.txt; git status --porcelain")
	if out != "try\nv1\n" {
		t.Fatalf("--branch --from: %q", out)
	}
	if br := strings.TrimSpace(gitFixture(t, repo, "git branch --list try")); br != "" {
		t.Fatalf("the host got branch %q", br)
	}
	v.must("vm", "delete", "ws")

	// A bare `vm run PATH` lands in the repository (commands from stdin here).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", v.ns, filepath.Join(v.bin, "banger"), "vm", "run", "--rm", "--image", "debian-bookworm-minimal", "--full-copy", repo)
	cmd.Env = v.environ()
	cmd.Stdin = strings.NewReader("pwd\nexit 3\n")
	so, err := cmd.Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("vm run PATH shell: %v", err)
	}
	if !strings.Contains(string(so), "/root/proj\n") {
		t.Fatalf("the shell did not start in /root/proj: %q", so)
	}
}
