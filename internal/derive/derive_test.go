package derive

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestImageName(t *testing.T) {
	for root, want := range map[string]string{
		"/src/My App":                     "my-app-0123abcd",
		"/src/--x--":                      "x-0123abcd",
		"/src/ÄÖ":                         "repo-0123abcd",
		"/src/" + strings.Repeat("a", 60): strings.Repeat("a", 40) + "-0123abcd",
	} {
		if got := imageName(root, "0123abcdef01"); got != want {
			t.Errorf("imageName(%q) = %q, want %q", root, got, want)
		}
	}
}

func TestRepoRoot(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, ".banger"), 0o755)
	os.WriteFile(filepath.Join(dir, ".banger", "image.toml"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "file"), nil, 0o644)
	for in, want := range map[string]string{dir: dir, filepath.Join(dir, ".banger", "image.toml"): dir} {
		if got, err := repoRoot(in); err != nil || got != want {
			t.Errorf("repoRoot(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", filepath.Join(dir, "file"), filepath.Join(dir, "missing")} {
		if _, err := repoRoot(bad); err == nil {
			t.Errorf("repoRoot(%q) accepted", bad)
		}
	}
}

// TestStageLines: only the build's stage lines reach the caller's progress,
// whole, however the output is split; an endless line is dropped, not kept.
func TestStageLines(t *testing.T) {
	var out bytes.Buffer
	w := &stageLines{w: &out, left: maxStageLines}
	for _, chunk := range []string{"Get:1 http://deb ", "bookworm InRelease\nbanger-build: apt-", "get update\nnoise\nbanger-build: done\n"} {
		w.Write([]byte(chunk))
	}
	w.Write(bytes.Repeat([]byte("x"), 70<<10))
	w.Write([]byte("\nbanger-build: after\n"))
	if got := out.String(); got != "banger-build: apt-get update\nbanger-build: done\nbanger-build: after\n" {
		t.Fatalf("progress got %q", got)
	}
}

// TestBuildOutputCapped: a build VM that writes without end costs the host
// at most maxBuildLog bytes of log and maxStageLines progress lines, and
// the build's writes never fail for it.
func TestBuildOutputCapped(t *testing.T) {
	var log bytes.Buffer
	h := &headLog{w: &log, left: 10}
	for _, p := range []string{"0123456", "789abc", "def"} {
		if n, err := h.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	if got := log.String(); got != "0123456789\n[banger: the build log is cut at 64 MiB]\n" {
		t.Fatalf("log %q", got)
	}
	var out bytes.Buffer
	s := &stageLines{w: &out, left: 2}
	s.Write([]byte("banger-build: a\nbanger-build: b\nbanger-build: c\n"))
	if out.String() != "banger-build: a\nbanger-build: b\n" {
		t.Fatalf("progress %q", out.String())
	}
}
