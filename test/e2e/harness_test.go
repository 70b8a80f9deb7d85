// Package e2e runs banger's real binaries, built once per test run with
// stamped build info, against real daemons in throwaway home directories.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/guestbuild"
	"github.com/banger-dev/banger/internal/testutil"
)

// Version stamped into the binaries under test.
const testVersion = "v0.0.0-e2e"

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "banger-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	if err := buildBinaries(dir, testVersion, "e2e0000000000000000000000000000000000000"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// buildBinaries builds banger and bangerd into dir with stamped build info.
func buildBinaries(dir, version, commit string) error {
	pkg := "github.com/banger-dev/banger/internal/buildinfo"
	ldflags := fmt.Sprintf("-X %s.Version=%s -X %s.Commit=%s -X %s.BuiltAt=2026-11-25T20:00:00Z", pkg, version, pkg, commit, pkg)
	// Static, as 'make build' and releases make them (banger-agent runs in guests).
	for _, b := range []string{"banger", "bangerd", "banger-release", "banger-vmm", "banger-agent", "banger-vk"} {
		cmd := exec.Command("go", "build", "-ldflags", ldflags, "-o", filepath.Join(dir, b), "./cmd/"+b)
		cmd.Dir = repoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", b, err, out)
		}
	}
	return nil
}

// env is an isolated user-mode environment: its own HOME and runtime dir.
type env struct {
	t    testing.TB
	home string
	run  string
	bin  string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	home, err := os.MkdirTemp("", "bhome")
	if err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(home, "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, home: home, run: run, bin: binDir}
	t.Cleanup(func() {
		e.banger("daemon", "stop")
		os.RemoveAll(home)
	})
	return e
}

func (e *env) environ() []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "XDG_") || strings.HasPrefix(kv, "HOME=") || strings.HasPrefix(kv, "BANGER_") || strings.HasPrefix(kv, "NO_COLOR=") {
			continue
		}
		out = append(out, kv)
	}
	return append(out, "HOME="+e.home, "XDG_RUNTIME_DIR="+e.run, "NO_COLOR=1",
		"BANGER_INSTALL_META="+filepath.Join(e.home, "no-install.toml"))
}

func (e *env) socket() string { return filepath.Join(e.run, "banger", "bangerd.sock") }

func (e *env) configFile() string { return filepath.Join(e.home, ".config", "banger", "config.toml") }

func (e *env) dbPath() string { return filepath.Join(e.home, ".local", "state", "banger", "banger.db") }

type result struct {
	stdout, stderr string
	code           int
}

func (e *env) run1(bin string, args ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(e.bin, bin), args...)
	cmd.Env = e.environ()
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("%s %v: %v", bin, args, err)
	}
	return result{stdout: so.String(), stderr: se.String(), code: code}
}

func (e *env) banger(args ...string) result  { return e.run1("banger", args...) }
func (e *env) bangerd(args ...string) result { return e.run1("bangerd", args...) }

// guestOpts builds guest artifacts where the test's daemon looks for them:
// the shared test cache.
func guestOpts() guestbuild.Options {
	return guestbuild.Options{CacheDir: filepath.Join(testutil.CacheDir(), "xdg", "banger")}
}
