package guestjob

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary be banger-agent: start re-executes itself
// as "job supervise DIR ID".
func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == "job" {
		os.Exit(run(jobs{Dir}, os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func call(t *testing.T, s jobs, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(s, args, &out, &errb)
	return out.String(), errb.String(), code
}

func list(t *testing.T, s jobs) []Job {
	t.Helper()
	out, errs, code := call(t, s, "list")
	var js []Job
	if code != 0 || json.Unmarshal([]byte(out), &js) != nil {
		t.Fatalf("list: %d %q %q", code, out, errs)
	}
	return js
}

func waitEnded(t *testing.T, s jobs, id string) Job {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if j, err := s.get(id); err == nil && !j.Running {
			return j
		}
	}
	t.Fatalf("job %s did not end", id)
	return Job{}
}

// TestJobLifecycle: a started job outlives its starter, its output is kept
// and can be read and followed from any later call, the follower returns
// its exit status; a killed job reports 128+N; list shows both.
func TestJobLifecycle(t *testing.T) {
	s := jobs{t.TempDir()}
	out, errs, code := call(t, s, "start", "--", "sh", "-c", `for i in 1 2 3; do echo "n=$i"; sleep 0.2; done; echo err >&2; exit 7`)
	id := strings.TrimSpace(out)
	if code != 0 || !ValidID(id) {
		t.Fatalf("start: %d %q %q", code, out, errs)
	}
	// Follow from the start: everything, then the job's own exit status.
	out, _, code = call(t, s, "logs", "-f", id)
	if code != 7 || out != "n=1\nn=2\nn=3\nerr\n" {
		t.Errorf("logs -f: exit %d, %q", code, out)
	}
	out, _, code = call(t, s, "logs", id)
	if code != 0 || out != "n=1\nn=2\nn=3\nerr\n" {
		t.Errorf("logs after the end: exit %d, %q", code, out)
	}

	out, _, _ = call(t, s, "start", "--", "sh", "-c", "trap '' HUP; i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done")
	loop := strings.TrimSpace(out)
	time.Sleep(300 * time.Millisecond)
	js := list(t, s)
	if len(js) != 2 || js[0].ID != id || js[0].Status() != "exited 7" || js[1].ID != loop || !js[1].Running || js[1].PID <= 0 {
		t.Fatalf("list: %+v", js)
	}
	if _, errs, code := call(t, s, "kill", loop, "KILL"); code != 0 {
		t.Fatalf("kill: %s", errs)
	}
	j := waitEnded(t, s, loop)
	if j.Status() != "exited 137" || j.OutputBytes == 0 {
		t.Errorf("killed job: %+v", j)
	}
	if _, errs, code := call(t, s, "kill", loop); code != 1 || errs != "banger-agent: job: job "+loop+" already exited 137\n" {
		t.Errorf("kill of an ended job: %d %q", code, errs)
	}
}

// TestJobErrors: a command that does not exist, an unknown id, a bad
// signal and bad arguments.
func TestJobErrors(t *testing.T) {
	s := jobs{t.TempDir()}
	_, errs, code := call(t, s, "start", "--", "no-such-command-xyz")
	if code != 1 || errs != "banger-agent: job: no-such-command-xyz: command not found\n" {
		t.Fatalf("start of a missing command: %d %q", code, errs)
	}
	js := list(t, s)
	if len(js) != 1 {
		t.Fatalf("list: %+v", js)
	}
	j := js[0]
	if j.Status() != "exited 127" {
		t.Errorf("missing command: %+v", j)
	}
	if out, _, _ := call(t, s, "logs", j.ID); out != "banger-agent: job: no-such-command-xyz: command not found\n" {
		t.Errorf("missing command's output: %q", out)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"logs", "0123456789ab"}, 1, "banger-agent: job: no job 0123456789ab in this VM (jobs end when the VM stops)\n"},
		{[]string{"logs", "../../etc"}, 1, "banger-agent: job: \"../../etc\" is not a job id\n"},
		{[]string{"kill", j.ID, "BOGUS"}, 1, "banger-agent: job: job " + j.ID + " already exited 127\n"},
		{[]string{"start", "sh"}, 2, ""},
		{[]string{"frob"}, 2, ""},
	} {
		_, errs, code := call(t, s, tc.args...)
		if code != tc.code || tc.want != "" && errs != tc.want {
			t.Errorf("%v: %d %q, want %d %q", tc.args, code, errs, tc.code, tc.want)
		}
	}
	if err := CheckSignal("sigterm"); err != nil {
		t.Error(err)
	}
	if err := CheckSignal("9"); err != nil {
		t.Error(err)
	}
	if err := CheckSignal("BOGUS"); err == nil {
		t.Error("BOGUS accepted")
	}
	if ents, _ := os.ReadDir(filepath.Join(s.dir, j.ID)); len(ents) < 4 {
		t.Errorf("job dir: %v", ents)
	}
}
