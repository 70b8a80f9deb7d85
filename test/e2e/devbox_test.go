package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/guestbuild"
)

// The dev box (debian-bookworm, banger's default image) builds a user's
// code out of the box: these tests run real projects in it with `vm run
// ./repo -- CMD`, all offline inside the test's network namespace.

// newDevboxEnv is a VM environment whose default image is the dev box with
// the shipped [vm_defaults] (the image is built beforehand, outside the
// namespace).
func newDevboxEnv(t testing.TB) *vmEnv {
	t.Helper()
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		t.Skip("mmdebstrap not installed: the dev box image cannot be built")
	}
	if os.Geteuid() != 0 {
		t.Skip("building the dev box image needs root (mmdebstrap --mode=root)")
	}
	v := newVMEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	t0 := time.Now()
	art, err := guestbuild.EnsureDevbox(ctx, guestOpts())
	if err != nil {
		t.Fatalf("dev box image: %v", err)
	}
	t.Logf("EnsureDevbox %s: %v", art.Key, time.Since(t0))
	// The defaults (vCPUs and memory sized from the host, an 8G work disk): what a user gets.
	if err := os.WriteFile(v.configFile(), []byte("default_image = \"debian-bookworm\"\nstart = \"cold\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return v
}

// project is a small repository of one language with a test suite, and the
// same with one failing test.
type project struct {
	name     string
	files    map[string]string
	broken   map[string]string // files replaced in the failing variant
	cmd      []string
	failCode int // the runner's own exit code when a test fails
	want     string
}

var projects = []project{
	{
		name: "c", cmd: []string{"make", "test"}, failCode: 2, want: "c: all tests passed",
		files: map[string]string{
			"Makefile": "CFLAGS ?= -O2 -Wall -Werror\n\ntest: add_test\n\t./add_test\n\nadd_test: add.c add_test.c add.h\n\t$(CC) $(CFLAGS) -o $@ add.c add_test.c\n\n.PHONY: test\n",
			"add.h":    "int add(int a, int b);\n",
			"add.c":    "#include \"add.h\"\nint add(int a, int b) { return a + b; }\n",
			"add_test.c": "#include <stdio.h>\n#include \"add.h\"\nint main(void) {\n\tif (add(2, 3) != 5) { printf(\"c: add(2, 3) = %d\\n\", add(2, 3)); return 1; }\n" +
				"\tprintf(\"c: all tests passed\\n\");\n\treturn 0;\n}\n",
		},
		broken: map[string]string{"add.c": "#include \"add.h\"\nint add(int a, int b) { return a - b; }\n"},
	},
	{
		name: "go", cmd: []string{"go", "test", "-v", "./..."}, failCode: 1, want: "--- PASS: TestAdd",
		files: map[string]string{
			"go.mod":      "module example.com/add\n\ngo 1.19\n",
			"add.go":      "package add\n\nfunc Add(a, b int) int { return a + b }\n",
			"add_test.go": "package add\n\nimport \"testing\"\n\nfunc TestAdd(t *testing.T) {\n\tif got := Add(2, 3); got != 5 {\n\t\tt.Fatalf(\"Add(2, 3) = %d\", got)\n\t}\n}\n",
		},
		broken: map[string]string{"add.go": "package add\n\nfunc Add(a, b int) int { return a - b }\n"},
	},
	{
		name: "python", cmd: []string{"python3", "-m", "pytest", "-q"}, failCode: 1, want: "1 passed",
		files: map[string]string{
			"pyproject.toml":    "[project]\nname = \"add\"\nversion = \"0.1\"\n",
			"add/__init__.py":   "def add(a, b):\n    return a + b\n",
			"tests/test_add.py": "from add import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
			"tests/conftest.py": "import os, sys\nsys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))\n",
		},
		broken: map[string]string{"add/__init__.py": "def add(a, b):\n    return a - b\n"},
	},
	{
		name: "node", cmd: []string{"npm", "test"}, failCode: 1, want: "# pass 1",
		files: map[string]string{
			"package.json":     "{\n  \"name\": \"add\",\n  \"version\": \"0.1.0\",\n  \"scripts\": { \"test\": \"node --test\" }\n}\n",
			"add.js":           "module.exports = (a, b) => a + b;\n",
			"test/add.test.js": "const test = require('node:test');\nconst assert = require('node:assert');\nconst add = require('../add');\n\ntest('add', () => { assert.strictEqual(add(2, 3), 5); });\n",
		},
		broken: map[string]string{"add.js": "module.exports = (a, b) => a - b;\n"},
	},
}

// writeRepo makes a committed git repository of files under dir.
func writeRepo(t testing.TB, dir string, files map[string]string) string {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	gitFixture(t, dir, `git init -q -b main && git add -A && git commit -qm fixture`)
	return dir
}

// TestDevboxBuildsProjects: `vm run ./repo -- <runner>` on the default image
// passes for a C, a Go, a Python and a Node project, and a failing test
// exits with the runner's own code.
func TestDevboxBuildsProjects(t *testing.T) {
	v := newDevboxEnv(t)
	for _, p := range projects {
		p := p
		t.Run(p.name, func(t *testing.T) {
			good := writeRepo(t, filepath.Join(v.home, p.name+"-good"), p.files)
			files := map[string]string{}
			for k, s := range p.files {
				files[k] = s
			}
			for k, s := range p.broken {
				files[k] = s
			}
			bad := writeRepo(t, filepath.Join(v.home, p.name+"-bad"), files)

			t0 := time.Now()
			r := v.banger(append([]string{"vm", "run", "--rm", good, "--"}, p.cmd...)...)
			t.Logf("%s: vm run -- %s: exit %d in %v", p.name, strings.Join(p.cmd, " "), r.code, time.Since(t0))
			if r.code != 0 || !strings.Contains(r.stdout+r.stderr, p.want) {
				t.Fatalf("%s passing suite: exit %d, want 0 and %q\nstdout:\n%s\nstderr:\n%s", p.name, r.code, p.want, tail(r.stdout, 3000), tail(r.stderr, 3000))
			}
			t1 := time.Now()
			r = v.banger(append([]string{"vm", "run", "--rm", bad, "--"}, p.cmd...)...)
			t.Logf("%s: failing suite: exit %d in %v", p.name, r.code, time.Since(t1))
			if r.code != p.failCode {
				t.Fatalf("%s failing suite: exit %d, want the runner's %d\nstdout:\n%s\nstderr:\n%s", p.name, r.code, p.failCode, tail(r.stdout, 3000), tail(r.stderr, 3000))
			}
		})
	}
}

// TestDevboxDocker: the guest's Docker loads an image made here (one static
// binary) and runs it.
func TestDevboxDocker(t *testing.T) {
	v := newDevboxEnv(t)
	repo := filepath.Join(v.home, "dock")
	if err := os.MkdirAll(repo, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "hello.tar"), helloImageTar(t), 0o644); err != nil {
		t.Fatal(err)
	}
	gitFixture(t, repo, `git init -q -b main && git add -A && git commit -qm image`)
	t0 := time.Now()
	r := v.banger("vm", "run", "--rm", repo, "--", "sh", "-c",
		"docker load -i hello.tar && docker run --rm banger-test/hello:1 && docker run --rm --network none banger-test/hello:1 from-docker")
	t.Logf("docker load + 2x docker run: exit %d in %v", r.code, time.Since(t0))
	if r.code != 0 || strings.Count(r.stdout, "hello from a banger test image") != 2 || !strings.Contains(r.stdout, "args: [from-docker]") {
		t.Fatalf("docker: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, tail(r.stdout, 3000), tail(r.stderr, 3000))
	}
}

// helloImageTar is a `docker save` tarball of one layer holding a static Go
// program, built here.
func helloImageTar(t testing.TB) []byte {
	t.Helper()
	dir := t.TempDir()
	src := "package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n)\n\nfunc main() {\n\tfmt.Println(\"hello from a banger test image\")\n\tfmt.Printf(\"args: %v\\n\", os.Args[1:])\n}\n"
	os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644)
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module hello\n\ngo 1.21\n"), 0o644)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", "hello", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build hello: %v\n%s", err, out)
	}
	bin, err := os.ReadFile(filepath.Join(dir, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	lw.WriteHeader(&tar.Header{Name: "hello", Mode: 0o755, Size: int64(len(bin)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)})
	lw.Write(bin)
	lw.Close()
	layerSum := sha256.Sum256(layer.Bytes())
	diffID := "sha256:" + hex.EncodeToString(layerSum[:])
	cfg, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Entrypoint": []string{"/hello"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{diffID}},
	})
	cfgSum := sha256.Sum256(cfg)
	cfgName := hex.EncodeToString(cfgSum[:]) + ".json"
	layerName := hex.EncodeToString(layerSum[:]) + "/layer.tar"
	manifest, _ := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": []string{"banger-test/hello:1"}, "Layers": []string{layerName}}})
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	add := func(name string, b []byte) {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)})
		tw.Write(b)
	}
	add(cfgName, cfg)
	add(layerName, layer.Bytes())
	add("manifest.json", manifest)
	tw.Close()
	return out.Bytes()
}

// TestDevboxMiseBootstrap: a repository with .mise.toml is refused without
// --nat before any VM exists (the message names --nat and --no-bootstrap);
// --no-bootstrap runs the command as is; with --nat the bootstrap runs and
// the command sees mise's environment.
func TestDevboxMiseBootstrap(t *testing.T) {
	v := newDevboxEnv(t)
	repo := writeRepo(t, filepath.Join(v.home, "misey"), map[string]string{
		".mise.toml": "[env]\nBANGER_MISE_PROBE = \"from-mise\"\n",
		"README":     "a repository that pins its tools for mise\n",
	})
	r := v.banger("vm", "run", "--rm", repo, "--", "true")
	if r.code != 2 || !strings.Contains(r.stderr, "--nat") || !strings.Contains(r.stderr, "--no-bootstrap") || !strings.Contains(r.stderr, ".mise.toml") {
		t.Fatalf("without --nat: exit %d, want 2 naming .mise.toml, --nat and --no-bootstrap\n%s", r.code, r.stderr)
	}
	if vms := strings.TrimSpace(v.must("vm", "list", "--json")); vms != "[]" {
		t.Fatalf("a refused run left VMs: %s", vms)
	}
	if dirs := v.vmDirs(); len(dirs) != 0 {
		t.Fatalf("a refused run left VM directories: %v", dirs)
	}

	r = v.banger("vm", "run", "--rm", "--no-bootstrap", repo, "--", "sh", "-c", "cat README; echo probe=${BANGER_MISE_PROBE:-unset}; mise --version")
	if r.code != 0 || !strings.Contains(r.stdout, "pins its tools") || !strings.Contains(r.stdout, "probe=unset") {
		t.Fatalf("--no-bootstrap: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, tail(r.stderr, 3000))
	}

	// With --nat (the namespace has no uplink: this configuration needs no
	// download) the bootstrap runs and the command runs under mise exec.
	r = v.banger("vm", "run", "--rm", "--nat", repo, "--", "sh", "-c", "echo probe=${BANGER_MISE_PROBE:-unset}; test -s /root/.banger/bootstrap.log || test -f /root/.banger/bootstrap.log")
	if r.code != 0 || !strings.Contains(r.stdout, "probe=from-mise") {
		t.Fatalf("--nat bootstrap: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, tail(r.stderr, 3000))
	}
}
