package sdharness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Tearing an instance down (Stop) and removing what earlier, dead test binaries left behind
// (removeStale).

// Stop powers the instance off (`systemctl poweroff --no-block`; in a container PID 1 then
// simply exits), SIGKILLs systemd if it is still alive after 5 s (which kills every process
// of its pid namespace), removes the cgroup subtree deepest first and the state directory.
// Mounts lived only in the instance's mount namespace and vanish with it. Idempotent; Start
// registers it with t.Cleanup. If the test failed, the tail of the journal and of the console
// log are logged first.
func (s *System) Stop() {
	s.stopOnce.Do(s.stop)
}

func (s *System) stop() {
	t0 := time.Now()
	if s.alive() {
		if s.t.Failed() {
			s.t.Logf("sdharness: %s: test failed; diagnostics:\n%s", s.name, s.diagnostics())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _, _, _ = s.Exec(ctx, "systemctl", "poweroff", "--no-block")
		cancel()
		select {
		case <-s.exited:
		case <-time.After(stopGrace):
			s.logf("sdharness: %s: still alive %v after poweroff; SIGKILL", s.name, stopGrace)
			// We are systemd's parent and have not reaped it: the PID cannot have been reused.
			syscall.Kill(s.pid, syscall.SIGKILL)
			<-s.exited
		}
	}
	if err := removeCgroupTree(s.cgroup, 5*time.Second); err != nil {
		s.t.Errorf("sdharness: %s: %v", s.name, err)
	}
	if err := os.RemoveAll(s.stateDir); err != nil {
		s.t.Errorf("sdharness: %s: %v", s.name, err)
	}
	os.Remove(filepath.Dir(s.stateDir)) // $TMPDIR/sdharness, if no other instance uses it
	s.logf("sdharness: %s: stopped in %.2fs", s.name, time.Since(t0).Seconds())
	s.t.Logf("sdharness: %s stopped in %.2fs", s.name, time.Since(t0).Seconds())
}

// diagnostics returns the tail of the journal and of the init and console logs.
func (s *System) diagnostics() string {
	var b strings.Builder
	if s.alive() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, _, _, _ := s.Exec(ctx, "journalctl", "--no-pager", "-o", "short-precise", "-n", "80")
		cancel()
		fmt.Fprintf(&b, "--- journal (last 80 lines)\n%s", out)
	}
	for _, n := range []string{"init.log", "console.log"} {
		data, _ := os.ReadFile(filepath.Join(s.stateDir, n))
		if len(data) > 8192 {
			data = data[len(data)-8192:]
		}
		fmt.Fprintf(&b, "--- %s\n%s\n", n, data)
	}
	return b.String()
}

// removeCgroupTree rmdirs dir and its subdirectories, deepest first, retrying until timeout
// (a cgroup stays busy for a moment after its last process was reaped).
func removeCgroupTree(dir string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var dirs []string
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		if len(dirs) == 0 {
			return nil
		}
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		var lastErr error
		for _, d := range dirs {
			if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
				lastErr = fmt.Errorf("rmdir %s: %w", d, err)
			}
		}
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			return fmt.Errorf("cgroup %s left behind (procs: %q): %v", dir, strings.TrimSpace(string(procs)), lastErr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// removeStale removes what a test binary that died without running its cleanups left:
// sdharness cgroups older than staleAge with no process in them, and state dirs older than
// staleAge whose cgroup is gone. Young or populated ones may belong to a running test.
func removeStale(cgroot, stateBase string) {
	old := func(fi os.FileInfo) bool { return time.Since(fi.ModTime()) > staleAge }
	ents, _ := os.ReadDir(cgroot)
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), cgroupPrefix) {
			continue
		}
		dir := filepath.Join(cgroot, e.Name())
		fi, err := os.Stat(dir)
		if err != nil || !old(fi) {
			continue
		}
		ev, _ := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if !strings.Contains(string(ev), "populated 0") {
			continue
		}
		removeCgroupTree(dir, 0)
	}
	ents, _ = os.ReadDir(stateBase)
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(cgroot, cgroupPrefix+e.Name())); err == nil {
			continue
		}
		fi, err := e.Info()
		if err != nil || !old(fi) {
			continue
		}
		os.RemoveAll(filepath.Join(stateBase, e.Name()))
	}
}
