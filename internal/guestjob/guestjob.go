// Package guestjob is the guest end of background commands ('banger vm exec
// -d'): banger-agent's "job" mode, run over SSH as the guest's root. A job
// is a command started under a supervisor that outlives the SSH session
// (its own session, no terminal), with its output and exit status kept in
// the guest under /run/banger/jobs/<id>/, so the host can list it, read or
// follow its output, and signal it from any later connection: after the
// CLI, the daemon or the host's SSH session went away. Jobs live as long as
// the guest's /run: a park and wake keeps them, a stop ends them.
//
// The host side is internal/cli; this package is imported by it (for the
// Job type and the exit-status rules) and by cmd/banger-agent.
package guestjob

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// AgentPath is where every guest has banger-agent (its tools disk), the
// program the host runs over SSH for jobs and copies.
const AgentPath = "/run/banger-tools/banger-agent"

// Dir holds one directory per job.
const Dir = "/run/banger/jobs"

// The files of a job's directory.
const (
	fileArgv    = "argv"    // JSON list
	fileStarted = "started" // RFC 3339 with nanoseconds
	filePID     = "pid"     // the command's pid, also its process group
	fileOutput  = "output"  // stdout and stderr, interleaved as written
	fileExit    = "exit"    // "<code>" once it ended (128+N when killed by signal N)
)

// Job is one background command, as "job list" reports it.
type Job struct {
	ID      string   `json:"id"`
	Argv    []string `json:"argv"`
	Started string   `json:"started"`
	PID     int      `json:"pid,omitempty"`
	// Running is true until the command ends; then ExitCode is its exit
	// status (128+N when killed by signal N, as a shell reports it).
	Running     bool  `json:"running"`
	ExitCode    *int  `json:"exit_code,omitempty"`
	OutputBytes int64 `json:"output_bytes"`
}

// Status is "running" or "exited N".
func (j Job) Status() string {
	if j.Running || j.ExitCode == nil {
		return "running"
	}
	return fmt.Sprintf("exited %d", *j.ExitCode)
}

// jobs is the job store rooted at dir (Dir in a guest).
type jobs struct{ dir string }

// validID: the ids start makes, 12 lowercase hex digits.
func ValidID(id string) bool {
	if len(id) != 12 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil && strings.ToLower(id) == id
}

func (s jobs) path(id string, file ...string) string {
	return filepath.Join(append([]string{s.dir, id}, file...)...)
}

// create makes a new job's directory with its argv and start time.
func (s jobs) create(argv []string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("no command")
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return "", err
	}
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	id := hex.EncodeToString(b)
	if err := os.Mkdir(s.path(id), 0o700); err != nil {
		return "", err
	}
	a, _ := json.Marshal(argv)
	if err := os.WriteFile(s.path(id, fileArgv), a, 0o600); err != nil {
		return "", err
	}
	started := time.Now().UTC().Format(time.RFC3339Nano)
	return id, os.WriteFile(s.path(id, fileStarted), []byte(started), 0o600)
}

// get reads one job.
func (s jobs) get(id string) (Job, error) {
	if !ValidID(id) {
		return Job{}, fmt.Errorf("%q is not a job id", id)
	}
	a, err := os.ReadFile(s.path(id, fileArgv))
	if errors.Is(err, os.ErrNotExist) {
		return Job{}, fmt.Errorf("no job %s in this VM (jobs end when the VM stops)", id)
	}
	if err != nil {
		return Job{}, err
	}
	j := Job{ID: id}
	if err := json.Unmarshal(a, &j.Argv); err != nil {
		return Job{}, fmt.Errorf("job %s: argv: %w", id, err)
	}
	if b, err := os.ReadFile(s.path(id, fileStarted)); err == nil {
		j.Started = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile(s.path(id, filePID)); err == nil {
		j.PID, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if fi, err := os.Stat(s.path(id, fileOutput)); err == nil {
		j.OutputBytes = fi.Size()
	}
	if code, ok := s.exitCode(id); ok {
		j.ExitCode = &code
	} else {
		j.Running = true
	}
	return j, nil
}

func (s jobs) exitCode(id string) (int, bool) {
	b, err := os.ReadFile(s.path(id, fileExit))
	if err != nil {
		return 0, false
	}
	code, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return code, err == nil
}

// list reads every job, oldest first.
func (s jobs) list() ([]Job, error) {
	ents, err := os.ReadDir(s.dir)
	if errors.Is(err, os.ErrNotExist) {
		return []Job{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := []Job{}
	for _, e := range ents {
		if !e.IsDir() || !ValidID(e.Name()) {
			continue
		}
		if j, err := s.get(e.Name()); err == nil {
			out = append(out, j)
		}
	}
	sortJobs(out)
	return out, nil
}

func sortJobs(js []Job) {
	sort.SliceStable(js, func(i, k int) bool { return js[i].Started < js[k].Started })
}

// exitStatus is the shell's number for how a process ended.
func exitStatus(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// writeExit records the exit status atomically: a reader sees none or all.
func (s jobs) writeExit(id string, code int) error {
	tmp := s.path(id, fileExit+".tmp")
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(code)+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.path(id, fileExit))
}
