package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/guestjob"
	"github.com/banger-dev/banger/internal/vmm"
)

// lastCount is the highest "count N" in out.
func lastCount(out string) int {
	n := 0
	for _, m := range regexp.MustCompile(`count (\d+)`).FindAllStringSubmatch(out, -1) {
		if k, _ := strconv.Atoi(m[1]); k > n {
			n = k
		}
	}
	return n
}

// TestVMExecBackgroundJob ([P12]): 'vm exec -d' starts a loop printing a
// counter and returns its id at once; the daemon is killed and started
// again, and 'vm logs --exec ID' still shows the output (kept in the guest),
// growing; 'vm logs --exec ID -f' follows it until '--kill' stops it, then
// exits with the job's status (143: TERM), which --kill and --list report.
func TestVMExecBackgroundJob(t *testing.T) {
	v := newVMEnv(t)
	v.must("vm", "create", "--name", "jb")
	t0 := time.Now()
	id := strings.TrimSpace(v.must("vm", "exec", "-d", "jb", "--", "sh", "-c", `i=0; while :; do i=$((i+1)); echo "count $i"; sleep 0.2; done`))
	if len(id) != 12 {
		t.Fatalf("vm exec -d printed %q, not a job id", id)
	}
	t.Logf("vm exec -d returned in %v", time.Since(t0).Round(time.Millisecond))
	time.Sleep(time.Second)
	first := lastCount(v.must("vm", "logs", "jb", "--exec", id))
	if first < 1 {
		t.Fatalf("no output yet")
	}

	// The daemon dies and a new one starts (the next CLI call starts it).
	pid := v.daemonPID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100 && vmm.Alive(pid); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	v.must("daemon", "status")
	time.Sleep(time.Second)
	second := lastCount(v.must("vm", "logs", "jb", "--exec", id))
	if second <= first {
		t.Fatalf("after the daemon's restart the counter is %d, was %d: the job did not run on", second, first)
	}

	// Follow in the background; kill the job; the follower ends with 143.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	follow := exec.CommandContext(ctx, "ip", "netns", "exec", v.ns, filepath.Join(v.bin, "banger"), "vm", "logs", "jb", "--exec", id, "-f")
	follow.Env = v.environ()
	var followOut bytes.Buffer
	follow.Stdout = &followOut
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	killOut := v.must("vm", "exec", "--kill", "jb", id)
	if killOut != "job "+id+" exited 143\n" {
		t.Errorf("vm exec --kill printed %q", killOut)
	}
	err := follow.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 143 {
		t.Errorf("vm logs -f: %v (want exit 143, the job's status)", err)
	}
	if n := lastCount(followOut.String()); n <= second || !strings.HasPrefix(followOut.String(), "count 1\n") {
		t.Errorf("vm logs -f printed up to count %d (had %d before it started): %q…", n, second, followOut.String()[:min(followOut.Len(), 40)])
	}

	var jobs []guestjob.Job
	if err := json.Unmarshal([]byte(v.must("vm", "exec", "--list", "jb", "--json")), &jobs); err != nil || len(jobs) != 1 {
		t.Fatalf("vm exec --list --json: %v %+v", err, jobs)
	}
	if jobs[0].ID != id || jobs[0].Running || jobs[0].ExitCode == nil || *jobs[0].ExitCode != 143 || jobs[0].Argv[0] != "sh" {
		t.Errorf("listed job: %+v", jobs[0])
	}
	if out := v.must("vm", "exec", "--list", "jb"); !strings.Contains(out, id) || !strings.Contains(out, "exited 143") {
		t.Errorf("vm exec --list: %q", out)
	}
	r := v.banger("vm", "exec", "--kill", "jb", id)
	if r.code != 1 || r.stderr != "banger: jb: job "+id+" already exited 143\n" {
		t.Errorf("second --kill: exit %d %q", r.code, r.stderr)
	}
	r = v.banger("vm", "exec", "-d", "jb", "--", "no-such-command")
	if r.code != 1 || r.stderr != "banger: jb: no-such-command: command not found\n" {
		t.Errorf("vm exec -d of a missing command: exit %d %q", r.code, r.stderr)
	}
}
