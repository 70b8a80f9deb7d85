package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/buildinfo"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/safesock"
)

// The tests start this test binary as the daemon (BANGER_DAEMON_BIN): with
// BANGER_FAKE_DAEMON set it behaves as bangerd does at start — private
// runtime dir, some start-up work, then safesock.Listen, exit 1 with
// "bangerd: socket in use: …" when another daemon already serves — and then
// answers ping and daemon.shutdown.
func TestMain(m *testing.M) {
	if os.Getenv("BANGER_FAKE_DAEMON") != "" {
		os.Exit(fakeDaemon())
	}
	os.Exit(m.Run())
}

func fakeDaemon() int {
	layout, err := paths.UserLayout()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bangerd: %v\n", err)
		return 1
	}
	if err := paths.EnsurePrivateDir(layout.RuntimeDir); err != nil {
		fmt.Fprintf(os.Stderr, "bangerd: refusing to start: %v\n", err)
		return 1
	}
	build := buildinfo.Get()
	if v := os.Getenv("BANGER_FAKE_VERSION"); v != "" {
		build.Version = v
	}
	// bangerd loads its config, opens and migrates the store and wires its
	// services before it binds the socket.
	delay := 300 * time.Millisecond
	if d, err := time.ParseDuration(os.Getenv("BANGER_FAKE_DELAY")); err == nil {
		delay = d
	}
	time.Sleep(delay)
	ln, err := safesock.Listen(layout.SocketPath())
	if err != nil {
		fmt.Fprintf(os.Stderr, "bangerd: %v\n", err)
		return 1
	}
	if f, err := os.OpenFile(os.Getenv("BANGER_FAKE_LOG"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err == nil {
		fmt.Fprintf(f, "%d %s\n", os.Getpid(), build.Version)
		f.Close()
	}
	stop := make(chan struct{})
	var once sync.Once
	go func() {
		// bangerd reconciles VMs between binding the socket and serving it.
		if d, err := time.ParseDuration(os.Getenv("BANGER_FAKE_SERVE_DELAY")); err == nil {
			time.Sleep(d)
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				dec := json.NewDecoder(bufio.NewReader(c))
				enc := json.NewEncoder(c)
				for {
					var req api.Request
					if dec.Decode(&req) != nil {
						return
					}
					resp := api.Response{ID: req.ID}
					switch req.Method {
					case api.MethodPing:
						resp.Result, _ = json.Marshal(api.PingResult{Build: build, PID: os.Getpid()})
					case api.MethodDaemonShutdown:
						resp.Result = json.RawMessage(`{}`)
						once.Do(func() { close(stop) })
					default:
						resp.Error = &api.WireError{Code: "unknown_method", Message: req.Method}
					}
					if enc.Encode(resp) != nil {
						return
					}
				}
			}()
		}
	}()
	select {
	case <-stop:
		time.Sleep(50 * time.Millisecond)
	case <-time.After(2 * time.Minute): // never outlive the test run
	}
	ln.Close() // unlinks the socket
	return 0
}

// fakeHome sets up a fresh user-mode environment whose daemon binary is the
// fake; it returns the layout and the file each serving daemon is logged to
// ("pid version" lines). Every logged daemon is killed at cleanup.
func fakeHome(t *testing.T) (paths.Layout, string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	run := filepath.Join(home, "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(home, "daemons.log")
	for k, v := range map[string]string{
		"HOME": home, "XDG_RUNTIME_DIR": run, "XDG_STATE_HOME": "", "XDG_CONFIG_HOME": "", "XDG_CACHE_HOME": "",
		"BANGER_DAEMON_BIN": exe, "BANGER_FAKE_DAEMON": "1", "BANGER_FAKE_LOG": logPath, "BANGER_FAKE_VERSION": "", "BANGER_FAKE_DELAY": "", "BANGER_FAKE_SERVE_DELAY": "",
	} {
		t.Setenv(k, v)
	}
	layout, err := paths.UserLayout()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, d := range daemons(logPath) {
			syscall.Kill(d.pid, syscall.SIGKILL)
		}
	})
	return layout, logPath
}

type daemonLine struct {
	pid     int
	version string
}

func daemons(logPath string) []daemonLine {
	b, _ := os.ReadFile(logPath)
	var out []daemonLine
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var d daemonLine
		if _, err := fmt.Sscanf(l, "%d %s", &d.pid, &d.version); err == nil {
			out = append(out, d)
		}
	}
	return out
}

// ensureAll runs n Ensure calls at once and returns their errors and the
// progress messages they printed.
func ensureAll(t *testing.T, layout paths.Layout, n int) ([]error, []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var mu sync.Mutex
	var msgs []string
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			c, err := Ensure(ctx, layout, func(m string) { mu.Lock(); msgs = append(msgs, m); mu.Unlock() })
			if err == nil {
				var p api.PingResult
				if p, err = c.Ping(ctx); err == nil && !p.Build.SameBuild(buildinfo.Get()) {
					err = fmt.Errorf("answered by build %+v", p.Build)
				}
			}
			errs[i] = err
		}(i)
	}
	close(start)
	wg.Wait()
	return errs, msgs
}

// Several CLIs started at once on a fresh HOME (three `vm run --rm` in
// parallel) must all get a daemon, and exactly one daemon must be started:
// auto-start is serialised by the lock beside the socket.
func TestConcurrentEnsureStartsOneDaemon(t *testing.T) {
	for round := 0; round < 3; round++ {
		t.Run(fmt.Sprint("round", round), func(t *testing.T) {
			layout, logPath := fakeHome(t)
			errs, _ := ensureAll(t, layout, 8)
			for i, err := range errs {
				if err != nil {
					t.Errorf("CLI %d: %v", i, err)
				}
			}
			if ds := daemons(logPath); len(ds) != 1 {
				t.Errorf("%d daemons served, want exactly 1: %v", len(ds), ds)
			}
		})
	}
}

// A daemon of another build is replaced once, under the same lock: every
// CLI gets this build's daemon, one notice is printed, one daemon started.
func TestConcurrentEnsureReplacesOtherBuildOnce(t *testing.T) {
	for round := 0; round < 2; round++ {
		t.Run(fmt.Sprint("round", round), func(t *testing.T) {
			layout, logPath := fakeHome(t)
			exe, _ := os.Executable()
			old := exec.Command(exe)
			old.Env = append(os.Environ(), "BANGER_FAKE_VERSION=v0.0.0-old")
			old.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			if err := old.Start(); err != nil {
				t.Fatal(err)
			}
			go old.Wait()
			t.Cleanup(func() { old.Process.Kill() })
			waitAnswer(t, layout.SocketPath())

			errs, msgs := ensureAll(t, layout, 8)
			for i, err := range errs {
				if err != nil {
					t.Errorf("CLI %d: %v", i, err)
				}
			}
			if len(msgs) != 1 || !strings.Contains(msgs[0], "restarting daemon v0.0.0-old") {
				t.Errorf("restart notices: %q, want exactly one", msgs)
			}
			ds := daemons(logPath)
			if len(ds) != 2 || ds[0].version != "v0.0.0-old" || ds[1].version != buildinfo.Get().Version {
				t.Errorf("daemons served: %v, want the old one then exactly one of this build", ds)
			}
		})
	}
}

// The lock file lives in the checked private runtime dir and is opened
// without following a symlink: a symlink planted there is refused, not
// followed, and no daemon is started through it.
func TestAutostartLockRefusesSymlink(t *testing.T) {
	layout, logPath := fakeHome(t)
	if err := paths.EnsurePrivateDir(layout.RuntimeDir); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "victim")
	if err := os.Symlink(target, filepath.Join(layout.RuntimeDir, "bangerd.autostart.lock")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := Ensure(ctx, layout, nil)
	if err == nil || !strings.Contains(err.Error(), "bangerd.autostart.lock") {
		t.Fatalf("Ensure through a symlinked lock file: %v", err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the symlink was followed: %v", err)
	}
	if ds := daemons(logPath); len(ds) != 0 {
		t.Fatalf("a daemon was started: %v", ds)
	}
}

// The lock is held only while a daemon is being started: afterwards it is
// free, and it was created private.
func TestAutostartLockReleased(t *testing.T) {
	layout, _ := fakeHome(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := Ensure(ctx, layout, nil); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(layout.RuntimeDir, "bangerd.autostart.lock")
	fi, err := os.Lstat(p)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Fatalf("lock file %v %v", fi, err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("lock still held after Ensure returned: %v", err)
	}
}

// A daemon started without the lock (by hand, or by a CLI killed while it
// waited for its daemon) can bind the socket before the one this CLI starts
// and still be starting (bangerd reconciles before it serves). The daemon
// the CLI started then exits with "socket in use"; the CLI waits for the
// daemon that won to answer instead of failing.
func TestEnsureWaitsForDaemonThatWonTheSocket(t *testing.T) {
	layout, logPath := fakeHome(t)
	exe, _ := os.Executable()
	other := exec.Command(exe)
	other.Env = append(os.Environ(), "BANGER_FAKE_DELAY=100ms", "BANGER_FAKE_SERVE_DELAY=2s")
	other.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	go other.Wait()
	t.Cleanup(func() { other.Process.Kill() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := Ensure(ctx, layout, nil); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	if ds := daemons(logPath); len(ds) != 1 || ds[0].pid != other.Process.Pid {
		t.Fatalf("daemons served: %v, want only the one started by hand (%d)", ds, other.Process.Pid)
	}
}

func waitAnswer(t *testing.T, sock string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := New(sock).Ping(ctx)
			cancel()
			if err == nil {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("the daemon never answered")
}
