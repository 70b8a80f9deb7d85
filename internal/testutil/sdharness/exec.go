package sdharness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/sysexec"
	"golang.org/x/sys/unix"
)

// Running programs inside an instance (Cmd, Exec), driving its systemd (Systemctl, Show,
// WaitUnit, Journal, InstallUnit) and mapping its PIDs to the host's (HostPID).

// Cmd returns the command (for sysexec.Run) that runs argv inside the instance through
// `nsenter -t PID -a`: all of its namespaces, its root and working directory (/). The process
// is cloned into the leaf cgroup harness.exec of the instance's subtree
// (SysProcAttr.UseCgroupFD) and gets its own process group (Setpgid). When the run's ctx is
// done, the group's processes inside are SIGKILLed and nsenter exits after reaping them
// (WaitDelay 2 s, then nsenter is killed too). To end a run early, cancel its ctx rather than
// killing nsenter: that would leave the process inside orphaned to the host's init (see
// killExec). Env is a minimal environment (PATH, LC_ALL=C, HOME=/root, TERM=dumb,
// SYSTEMD_PAGER=, SYSTEMD_COLORS=0); append to it rather than replacing it. Callers that
// replace SysProcAttr should keep those fields.
func (s *System) Cmd(argv ...string) sysexec.Cmd {
	cmd := sysexec.Cmd{
		Path: s.nsenter,
		Args: append([]string{"-t", strconv.Itoa(s.pid), "-a", "--"}, argv...),
		Dir:  "/",
		Env: []string{
			"PATH=" + insidePath, "LC_ALL=C", "HOME=/root", "TERM=dumb",
			"SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "SYSTEMD_LOG_COLOR=0",
		},
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
		Cancel:      func(p *os.Process) error { return s.killExec(p.Pid) },
		WaitDelay:   2 * time.Second,
	}
	if s.execCg != nil {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(s.execCg.Fd())
	}
	return cmd
}

// killExec SIGKILLs what an nsenter started: the members of its process group inside the
// instance, but not nsenter itself, which then reaps its child and exits. Killing nsenter
// first would orphan the child, and an orphan's new parent is the reaper of nsenter's pid
// namespace (the host's init), not the instance's systemd: its zombie would sit in the
// instance and stall systemd-shutdown. With nothing inside yet, nsenter itself is killed.
func (s *System) killExec(nsenterPID int) error {
	cands := map[int]bool{}
	b, _ := os.ReadFile(filepath.Join(s.cgroup, execCgroup, "cgroup.procs"))
	c, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", nsenterPID, nsenterPID))
	for _, f := range strings.Fields(string(b) + " " + string(c)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 && pid != nsenterPID {
			cands[pid] = true
		}
	}
	killed := false
	for pid := range cands {
		if pg, err := unix.Getpgid(pid); err == nil && pg == nsenterPID {
			if unix.Kill(pid, unix.SIGKILL) == nil {
				killed = true
			}
		}
	}
	if !killed {
		return unix.Kill(nsenterPID, unix.SIGKILL)
	}
	return nil
}

// Exec runs argv inside the instance (see Cmd) and returns its output. A non-zero exit is
// reported through exitCode with a nil err; err is set only when the command could not be
// run or did not exit normally (signal, ctx done), and exitCode is then -1.
func (s *System) Exec(ctx context.Context, argv ...string) (stdout, stderr string, exitCode int, err error) {
	res, err := sysexec.Run(ctx, s.Cmd(argv...))
	o, e := string(res.Stdout), string(res.Stderr)
	// A positive Code is a program that exited by itself with that status.
	var se *sysexec.Error
	switch {
	case err == nil:
		return o, e, 0, nil
	case errors.As(err, &se) && se.Started && se.Code > 0 && ctx.Err() == nil:
		return o, e, se.Code, nil
	default:
		if ctx.Err() != nil {
			err = fmt.Errorf("%v: %w", argv, err) // err is ctx.Err(), with the command
		}
		return o, e, -1, err
	}
}

// Systemctl runs systemctl args... inside and returns its stdout. A non-zero exit is an error
// that carries the exit code and stderr; the stdout is returned as well.
func (s *System) Systemctl(ctx context.Context, args ...string) (string, error) {
	out, errOut, code, err := s.Exec(ctx, append([]string{"systemctl"}, args...)...)
	if err != nil {
		return out, err
	}
	if code != 0 {
		return out, fmt.Errorf("systemctl %s: exit %d: %s", strings.Join(args, " "), code, strings.TrimSpace(errOut))
	}
	return out, nil
}

// Show returns properties of unit (`systemctl show --property=...`); with no props, all of
// them. Every requested property is present in the map, possibly with an empty value.
func (s *System) Show(ctx context.Context, unit string, props ...string) (map[string]string, error) {
	args := []string{"show"}
	for _, p := range props {
		args = append(args, "--property="+p)
	}
	args = append(args, "--", unit)
	out, err := s.Systemctl(ctx, args...)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	for _, p := range props {
		if _, ok := m[p]; !ok {
			m[p] = ""
		}
	}
	return m, nil
}

// WaitUnit polls unit's property prop until it equals one of want, or ctx is done; it returns
// the last value seen.
func (s *System) WaitUnit(ctx context.Context, unit, prop string, want ...string) (string, error) {
	last := ""
	for {
		m, err := s.Show(ctx, unit, prop)
		if err == nil {
			last = m[prop]
			for _, w := range want {
				if last == w {
					return last, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("%s %s=%q, want %q: %w", unit, prop, last, want, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Journal returns the journal of the given units (all of it with none) after asking journald
// to flush (`journalctl --sync`), so messages logged before the call are included. Errors are
// returned inline in the text.
func (s *System) Journal(ctx context.Context, units ...string) string {
	_, _, _, _ = s.Exec(ctx, "journalctl", "--sync")
	args := []string{"journalctl", "--no-pager", "-o", "short-precise"}
	for _, u := range units {
		args = append(args, "-u", u)
	}
	out, errOut, code, err := s.Exec(ctx, args...)
	if err != nil || code != 0 {
		out += fmt.Sprintf("\n[journalctl: exit %d, %v: %s]", code, err, strings.TrimSpace(errOut))
	}
	return out
}

// InstallUnit writes /etc/systemd/system/<name> inside (mode 0644) and runs daemon-reload.
func (s *System) InstallUnit(name, text string) error {
	if name == "" || strings.ContainsRune(name, '/') {
		return fmt.Errorf("invalid unit name %q", name)
	}
	if err := s.WriteFile("/etc/systemd/system/"+name, []byte(text), 0o644); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := s.Systemctl(ctx, "daemon-reload")
	return err
}

// HostPID maps a PID of the instance's pid namespace to the host PID, by reading NSpid in
// /proc/<pid>/status of the processes in the instance's cgroup subtree (then, failing that,
// of every process in the instance's pid namespace).
func (s *System) HostPID(nsPID int) (int, error) {
	if nsPID <= 0 {
		return 0, fmt.Errorf("invalid pid %d", nsPID)
	}
	self, err := nsPIDs(s.pid)
	if err != nil {
		return 0, err
	}
	level := len(self) - 1 // systemd is PID 1 at this level
	want := strconv.Itoa(nsPID)
	match := func(pid int) bool {
		ids, err := nsPIDs(pid)
		return err == nil && len(ids) > level && ids[level] == want
	}
	for _, pid := range s.cgroupProcs() {
		if match(pid) {
			return pid, nil
		}
	}
	ourNS, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", s.pid))
	if err != nil {
		return 0, err
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); err == nil && ns == ourNS && match(pid) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no process with pid %d in %s", nsPID, s.name)
}

func nsPIDs(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			return strings.Fields(rest), nil
		}
	}
	return nil, fmt.Errorf("pid %d: no NSpid in status", pid)
}

// cgroupProcs lists the host PIDs of every process in the instance's cgroup subtree.
func (s *System) cgroupProcs() []int {
	var pids []int
	filepath.WalkDir(s.cgroup, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}
