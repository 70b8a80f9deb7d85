package sysexec

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func sh(script string, args ...string) Cmd {
	return Cmd{Path: "sh", Args: append([]string{"-c", script, "sh"}, args...)}
}

func TestRunCapturesOutput(t *testing.T) {
	c := sh(`printf out; printf err >&2; printf '%s' "$1" "$FOO"`, "arg")
	c.ExtraEnv = []string{"FOO=bar"}
	res, err := Run(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Stdout) != "outargbar" || string(res.Stderr) != "err" {
		t.Errorf("stdout %q, stderr %q", res.Stdout, res.Stderr)
	}
	out, err := Output(context.Background(), "sh", "-c", "pwd")
	if err != nil || len(out) == 0 {
		t.Errorf("Output: %q %v", out, err)
	}
}

func TestRunEnvDirStdinArgv0(t *testing.T) {
	dir := t.TempDir()
	c := sh(`cat; printf ' %s %s %s' "$(pwd)" "$0" "${HOME-unset}"`)
	c.Path = "/bin/sh"
	c.Dir = dir
	c.Env = []string{"PATH=/usr/bin:/bin"}
	c.Stdin = strings.NewReader("in")
	res, err := Run(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	real, _ := filepath.EvalSymlinks(dir)
	if want := "in " + real + " sh unset"; string(res.Stdout) != want {
		t.Errorf("stdout %q, want %q", res.Stdout, want)
	}
	// Argv0 changes what the program sees as its name.
	res, err = Run(context.Background(), Cmd{Path: "/bin/sh", Argv0: "renamed", Args: []string{"-c", `echo "$0"`}})
	if err != nil || strings.TrimSpace(string(res.Stdout)) != "renamed" {
		t.Errorf("argv0: %q %v", res.Stdout, err)
	}
}

func TestRunStreamsToWriters(t *testing.T) {
	var o, e bytes.Buffer
	c := sh(`echo out; echo err >&2; exit 3`)
	c.Stdout, c.Stderr = &o, &e
	res, err := Run(context.Background(), c)
	if o.String() != "out\n" || e.String() != "err\n" || res.Stdout != nil || res.Stderr != nil {
		t.Errorf("writers %q %q, result %+v", o.String(), e.String(), res)
	}
	var se *Error
	if !errors.As(err, &se) || se.Code != 3 || !se.Started || se.Stderr != "" {
		t.Fatalf("err = %#v", err)
	}
}

func TestErrorText(t *testing.T) {
	var lines []string
	for i := 1; i <= 10; i++ {
		lines = append(lines, "line "+strings.Repeat("x", i%3))
	}
	c := sh(`printf '%s\n' "$@" >&2; printf '\n\n' >&2; exit 7`, lines...)
	res, err := Run(context.Background(), c)
	var se *Error
	if !errors.As(err, &se) {
		t.Fatalf("err = %v", err)
	}
	if se.Code != 7 || !se.Started || len(res.Stderr) == 0 {
		t.Errorf("code %d started %v stderr %q", se.Code, se.Started, res.Stderr)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, `sh -c "printf`) || !strings.Contains(msg, ": exit status 7: line x | line xx | line | line x") {
		t.Errorf("message %q", msg)
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("message is not one line: %q", msg)
	}

	// No stderr: the tail comes from stdout.
	_, err = Run(context.Background(), sh(`echo only stdout; exit 1`))
	if err == nil || !strings.HasSuffix(err.Error(), ": exit status 1: only stdout") {
		t.Errorf("stdout fallback: %v", err)
	}
	// A program that cannot start: os/exec's error, which names it.
	_, err = Run(context.Background(), Cmd{Path: "/nonexistent/banger-prog", Args: []string{"x"}})
	if !errors.As(err, &se) || se.Started || se.Code != -1 || !strings.Contains(err.Error(), "/nonexistent/banger-prog") {
		t.Errorf("start failure: %#v %v", se, err)
	}
}

func TestRunContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Run(ctx, Cmd{Path: "sleep", Args: []string{"10"}})
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("err = %v after %s", err, time.Since(start))
	}
	if !strings.HasPrefix(err.Error(), "sleep 10: context deadline exceeded") {
		t.Errorf("message %q", err)
	}
	done, stop := context.WithCancel(context.Background())
	stop()
	if _, err := Run(done, Cmd{Path: "true"}); !errors.Is(err, context.Canceled) || err.Error() != "true: context canceled" {
		t.Errorf("cancelled before the start: %v", err)
	}
}

// TestTerminate: Terminate sends SIGTERM, which the program may trap and
// clean up after; WaitDelay then bounds the wait.
func TestTerminate(t *testing.T) {
	mark := filepath.Join(t.TempDir(), "cleaned")
	ctx, cancel := context.WithCancel(context.Background())
	c := sh(`trap 'echo > "$1"; exit 0' TERM; echo ready; while :; do sleep 0.05; done`, mark)
	c.Cancel, c.WaitDelay = Terminate, 5*time.Second
	r, w, _ := os.Pipe()
	c.Stdout = w
	errc := make(chan error, 1)
	go func() { _, err := Run(ctx, c); errc <- err }()
	buf := make([]byte, 6)
	if _, err := r.Read(buf); err != nil {
		t.Fatal(err)
	}
	w.Close()
	cancel()
	err := <-errc
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v", err)
	}
	if _, err := os.Stat(mark); err != nil {
		t.Errorf("the TERM trap did not run: %v", err)
	}
}

func TestStartDetached(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := Start(Cmd{Path: "sh", Args: []string{"-c", `read -r _ _ _ _ _ sid _ < /proc/$$/stat; echo "$sid"; exit 4`}, Stdout: f,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true}})
	if err != nil {
		t.Fatal(err)
	}
	err = p.Wait()
	var se *Error
	if !errors.As(err, &se) || se.Code != 4 || !se.Started {
		t.Fatalf("Wait: %v", err)
	}
	b, _ := os.ReadFile(out)
	if sid := strings.TrimSpace(string(b)); sid != strconv.Itoa(p.Pid) {
		t.Errorf("session %s, want its own (%d)", sid, p.Pid)
	}
	if _, err := Start(Cmd{Path: "/nonexistent/banger-daemon"}); err == nil || !strings.Contains(err.Error(), "banger-daemon") {
		t.Errorf("Start of a missing program: %v", err)
	}
}

func TestLook(t *testing.T) {
	if p, err := LookPath("sh"); err != nil || !filepath.IsAbs(p) {
		t.Errorf("LookPath(sh) = %q, %v", p, err)
	}
	dir := t.TempDir()
	tool := filepath.Join(dir, "banger-tool")
	os.WriteFile(tool, []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "not-exec"), nil, 0o644)
	if p, err := LookIn("banger-tool", []string{"/nonexistent", dir}); err != nil || p != tool {
		t.Errorf("LookIn = %q, %v", p, err)
	}
	_, err := LookIn("not-exec", []string{dir})
	if !errors.Is(err, ErrNotFound) || err.Error() != "not-exec not found in "+dir {
		t.Errorf("LookIn of a non-executable: %v", err)
	}
	t.Setenv("PATH", dir)
	if p, err := LookPath("banger-tool"); err != nil || p != tool {
		t.Errorf("LookPath from PATH = %q, %v", p, err)
	}
	// sh is not in PATH now: the system directories give it.
	if p, err := LookPath("sh"); err != nil || !strings.HasSuffix(p, "/sh") {
		t.Errorf("LookPath fallback = %q, %v", p, err)
	}
	if p, err := LookSystemPath("banger-tool"); err != nil || p != tool {
		t.Errorf("LookSystemPath from PATH = %q, %v", p, err)
	}
	if p, err := LookSystemPath("sh"); err != nil || filepath.Dir(p) == dir {
		t.Errorf("LookSystemPath(sh) = %q, %v", p, err)
	}
	_, err = LookPath("banger-no-such-tool")
	if !errors.Is(err, ErrNotFound) || err.Error() != "banger-no-such-tool not found in PATH or /usr/sbin:/sbin:/usr/bin:/bin" {
		t.Errorf("LookPath miss: %v", err)
	}
}

func TestLastLinesOneLine(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int
		want string
	}{
		{"", 3, ""},
		{"a\nb\nc\nd\n\n  \n", 2, "c\nd"},
		{"a\nb", 5, "a\nb"},
		{"one", 1, "one"},
		{"a\n\nb", 2, "\nb"},
	} {
		if got := LastLines(c.in, c.n); got != c.want {
			t.Errorf("LastLines(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
	long := strings.Repeat("é", TailBytes)
	if got := LastLines(long, 1); len(got) > TailBytes || !strings.HasPrefix(got, "…é") {
		t.Errorf("LastLines of a long line: %d bytes, %q...", len(got), got[:8])
	}
	if got := OneLine("  E: one \t two\n\n\x1b[31mred\n"); got != "E: one two | ?[31mred" {
		t.Errorf("OneLine = %q", got)
	}
}

func TestCommandLine(t *testing.T) {
	if got := commandLine([]string{"/usr/bin/ssh-keygen", "-N", "", "-C", "root@h x", "-f", "/k"}); got != `ssh-keygen -N "" -C "root@h x" -f /k` {
		t.Errorf("CommandLine = %q", got)
	}
	long := commandLine([]string{"go", strings.Repeat("a", 150), strings.Repeat("b", 150)})
	if len(long) > maxCommandLine+10 || !strings.HasSuffix(long, " …") {
		t.Errorf("long CommandLine: %d bytes %q", len(long), long)
	}
}
