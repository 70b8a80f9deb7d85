package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

// Concurrency as a new user meets it: several CLIs started at once on a
// fresh HOME. They must all succeed, start exactly one daemon (auto-start is
// serialised by <runtime>/bangerd.autostart.lock), migrate the new database
// once, and — with guests — set up the host once and leave nothing behind.

// runAll starts every command at once and waits for all of them. Unlike
// env.run1 it never calls t.Fatal, so it is safe with many processes.
func runAll(timeout time.Duration, cmds []*exec.Cmd) []result {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out := make([]result, len(cmds))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range cmds {
		wg.Add(1)
		go func(i int, c *exec.Cmd) {
			defer wg.Done()
			var so, se bytes.Buffer
			c.Stdout, c.Stderr = &so, &se
			<-start
			if err := c.Start(); err != nil {
				out[i] = result{stderr: err.Error(), code: -1}
				return
			}
			stop := context.AfterFunc(ctx, func() { c.Process.Kill() })
			err := c.Wait()
			stop()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				so.WriteString(err.Error())
				code = -1
			}
			out[i] = result{stdout: so.String(), stderr: se.String(), code: code}
		}(i, c)
	}
	close(start)
	wg.Wait()
	return out
}

// daemonStarts counts the daemons that came up (their "daemon started" log
// line) in an env's auto-start log.
func daemonStarts(home string) int {
	b, _ := os.ReadFile(filepath.Join(home, ".local", "state", "banger", "bangerd.log"))
	return bytes.Count(b, []byte(`"msg":"daemon started"`))
}

// procsOf lists the processes (pid: command line) that still run with this
// env's runtime dir in their environment (its CLIs and daemon) or mention
// its HOME on their command line (its VMMs).
func procsOf(home, run string) []string {
	var out []string
	self := fmt.Sprint(os.Getpid())
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if e.Name() == self || strings.Trim(e.Name(), "0123456789") != "" {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		environ, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if bytes.Contains(cmdline, []byte(home)) || bytes.Contains(environ, []byte("XDG_RUNTIME_DIR="+run+"\x00")) {
			out = append(out, e.Name()+": "+strings.ReplaceAll(strings.TrimSpace(string(cmdline)), "\x00", " "))
		}
	}
	return out
}

// waitNoProcs fails the test if any process of the env outlives a short
// grace period, and kills what is left (by pid) so it does not outlive the
// test either.
func waitNoProcs(t *testing.T, home, run string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		left := procsOf(home, run)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, p := range left {
				var pid int
				if _, err := fmt.Sscanf(p, "%d:", &pid); err == nil && pid > 1 {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			t.Fatalf("processes left behind: %v", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Eight CLIs at once on a fresh HOME, five times: all succeed, all talk to
// one daemon, exactly one daemon is started, and `daemon stop` leaves no
// daemon behind. Before the auto-start lock, the losers of the race failed
// with "socket in use: another process is serving …" (or their daemons
// failed migrating the new database).
func TestConcurrentCLIsStartOneDaemon(t *testing.T) {
	const clis, rounds = 8, 5
	for round := 0; round < rounds; round++ {
		t.Run(fmt.Sprint("round", round), func(t *testing.T) {
			e := newEnv(t)
			cmds := make([]*exec.Cmd, clis)
			for i := range cmds {
				args := []string{"daemon", "status", "--json"}
				if i%2 == 1 {
					args = []string{"vm", "list", "--json"}
				}
				cmds[i] = exec.Command(filepath.Join(e.bin, "banger"), args...)
				cmds[i].Env = e.environ()
			}
			pids := map[int]bool{}
			for i, r := range runAll(2*time.Minute, cmds) {
				if r.code != 0 {
					t.Errorf("CLI %d (%s): exit %d\nstderr: %s", i, strings.Join(cmds[i].Args[1:], " "), r.code, r.stderr)
					continue
				}
				if i%2 == 0 {
					var st api.DaemonStatus
					if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || !st.Running || st.Version != testVersion {
						t.Errorf("CLI %d: status %q (%v)", i, r.stdout, err)
					}
					pids[st.PID] = true
				} else if strings.TrimSpace(r.stdout) != "[]" {
					t.Errorf("CLI %d: vm list %q", i, r.stdout)
				}
			}
			if len(pids) != 1 {
				t.Errorf("CLIs were answered by %d daemons: %v", len(pids), pids)
			}
			if n := daemonStarts(e.home); n != 1 {
				t.Errorf("%d daemons started, want exactly 1", n)
			}
			// The database was migrated once, by the one daemon.
			if r := e.bangerd("--check-migrations"); r.code != 0 {
				t.Errorf("check-migrations: %d %q %q", r.code, r.stdout, r.stderr)
			}
			if r := e.banger("daemon", "stop"); r.code != 0 {
				t.Fatalf("daemon stop: %+v", r)
			}
			waitNoProcs(t, e.home, e.run)
		})
	}
}

// guestAddrRE matches a guest address of the default cidr (not the network,
// the gateway or the broadcast address) in an nft ruleset.
var guestAddrRE = regexp.MustCompile(`\b172\.30\.0\.([2-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-4])\b`)

// tapNameRE matches one VM's tap (bgtap + 8 hex), not the bgtap* wildcard
// of the shared rules.
var tapNameRE = regexp.MustCompile(`bgtap[0-9a-f]{8}`)

// The must-show: three, then eight, concurrent `vm run --rm -- true`
// on a fresh HOME all succeed, repeated five times, nothing left behind: no
// VM rows, no taps, no per-VM rules, no VM directories, no VMM or daemon
// processes once the daemon is stopped. Each iteration is a fresh HOME (and
// network namespace); one daemon serves all of its CLIs.
func TestConcurrentVMRunRm(t *testing.T) {
	for _, n := range []int{3, 8} {
		for iter := 0; iter < 5; iter++ {
			t.Run(fmt.Sprintf("%dx/iter%d", n, iter), func(t *testing.T) {
				v := newVMEnv(t)
				cmds := make([]*exec.Cmd, n)
				for i := range cmds {
					cmds[i] = exec.Command("ip", "netns", "exec", v.ns, filepath.Join(v.bin, "banger"),
						"vm", "run", "--rm", "--image", "tiny", "--", "true")
					cmds[i].Env = v.environ()
				}
				start := time.Now()
				for i, r := range runAll(10*time.Minute, cmds) {
					if r.code != 0 {
						t.Errorf("vm run %d: exit %d\nstdout: %s\nstderr: %s", i, r.code, r.stdout, r.stderr)
					}
				}
				t.Logf("%d concurrent vm run --rm: %s", n, time.Since(start).Round(time.Millisecond))
				if c := daemonStarts(v.home); c != 1 {
					t.Errorf("%d daemons started, want exactly 1", c)
				}
				if vms := strings.TrimSpace(v.must("vm", "list", "--json")); vms != "[]" {
					t.Errorf("VM rows left: %s", vms)
				}
				if taps := v.taps(); len(taps) != 0 {
					t.Errorf("taps left: %v", taps)
				}
				if rs := v.ruleset(); tapNameRE.MatchString(rs) || guestAddrRE.MatchString(rs) {
					t.Errorf("per-VM nft rules left:\n%s", rs)
				}
				if dirs := v.vmDirs(); len(dirs) != 0 {
					t.Errorf("VM dirs left: %v", dirs)
				}
				if r := v.banger("daemon", "stop"); r.code != 0 {
					t.Fatalf("daemon stop: exit %d %s", r.code, r.stderr)
				}
				waitNoProcs(t, v.home, v.run)
			})
		}
	}
}
