package guestjob

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/sysexec"
)

// GuestMain is banger-agent's job mode:
//
//	banger-agent job start -- CMD [ARG...]   # prints the new job's id
//	banger-agent job list                    # JSON list of jobs
//	banger-agent job logs [-f] ID            # its output; -f follows until it ends
//	banger-agent job kill ID [SIGNAL]        # signal its process group (default TERM)
//	banger-agent job supervise DIR ID        # internal: runs the command
//
// It returns 0; for "logs -f", the job's own exit status once it ends; 1
// on a failure (one "banger-agent: job: …" line on stderr); 2 on bad
// arguments.
func GuestMain(args []string, stdout, stderr io.Writer) int {
	return run(jobs{Dir}, args, stdout, stderr)
}

func run(s jobs, args []string, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintf(stderr, "banger-agent: job: %v\n", err)
		return 1
	}
	usage := func() int {
		fmt.Fprintln(stderr, "banger-agent: job: usage: banger-agent job start -- CMD... | list | logs [-f] ID | kill ID [SIGNAL]")
		return 2
	}
	if len(args) == 0 {
		return usage()
	}
	switch args[0] {
	case "start":
		if len(args) < 3 || args[1] != "--" {
			return usage()
		}
		id, err := s.start(args[2:])
		if err != nil {
			return fail(err)
		}
		fmt.Fprintln(stdout, id)
	case "supervise":
		if len(args) != 3 || !filepath.IsAbs(args[1]) {
			return usage()
		}
		if err := (jobs{args[1]}).supervise(args[2]); err != nil {
			return fail(err)
		}
	case "list":
		js, err := s.list()
		if err != nil {
			return fail(err)
		}
		json.NewEncoder(stdout).Encode(js)
	case "logs":
		follow := len(args) == 3 && args[1] == "-f"
		if len(args) != 2 && !follow {
			return usage()
		}
		code, err := s.logs(args[len(args)-1], follow, stdout)
		if err != nil {
			return fail(err)
		}
		return code
	case "kill":
		if len(args) != 2 && len(args) != 3 {
			return usage()
		}
		sig := "TERM"
		if len(args) == 3 {
			sig = args[2]
		}
		if err := s.kill(args[1], sig); err != nil {
			return fail(err)
		}
	default:
		return usage()
	}
	return 0
}

// start records the job and starts its supervisor in a session of its own
// (no terminal, nothing inherited from the SSH session but the
// environment), then waits until the command runs.
func (s jobs) start(argv []string) (string, error) {
	id, err := s.create(argv)
	if err != nil {
		return "", err
	}
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer null.Close()
	p, err := os.StartProcess(self, []string{self, "job", "supervise", s.dir, id}, &os.ProcAttr{
		Dir:   mustGetwd(),
		Files: []*os.File{null, null, null},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return "", err
	}
	p.Release()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		j, err := s.get(id)
		if err == nil && (j.PID > 0 || !j.Running) {
			if !j.Running && j.PID == 0 {
				b, _ := os.ReadFile(s.path(id, fileOutput))
				return "", errors.New(strings.TrimPrefix(strings.TrimSpace(sysexec.LastLines(string(b), 1)), "banger-agent: job: "))
			}
			return id, nil
		}
	}
	return "", fmt.Errorf("job %s: its supervisor did not start the command within 10s", id)
}

func mustGetwd() string {
	wd, err := os.Getwd()
	if err != nil {
		return "/"
	}
	return wd
}

// supervise runs the job's command in a process group of its own, its
// output appended to the job's output file, and records its exit status.
// SIGHUP (its SSH session's end, had anything kept it) is ignored.
func (s jobs) supervise(id string) error {
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	j, err := s.get(id)
	if err != nil {
		return err
	}
	out, err := os.OpenFile(s.path(id, fileOutput), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer null.Close()
	path, err := lookPath(j.Argv[0])
	if err != nil {
		fmt.Fprintf(out, "banger-agent: job: %v\n", err)
		return s.writeExit(id, 127)
	}
	p, err := os.StartProcess(path, j.Argv, &os.ProcAttr{
		Dir:   mustGetwd(),
		Files: []*os.File{null, out, out},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	})
	if err != nil {
		fmt.Fprintf(out, "banger-agent: job: %v\n", err)
		return s.writeExit(id, 126)
	}
	if err := os.WriteFile(s.path(id, filePID), []byte(strconv.Itoa(p.Pid)), 0o600); err != nil {
		p.Kill()
	}
	ps, err := p.Wait()
	if err != nil {
		return err
	}
	return s.writeExit(id, exitStatus(ps))
}

// logs copies the job's output to w; following, it waits for more until
// the job has ended and all of it was copied, then returns its exit status.
func (s jobs) logs(id string, follow bool, w io.Writer) (int, error) {
	if _, err := s.get(id); err != nil {
		return 0, err
	}
	f, err := os.Open(s.path(id, fileOutput))
	if errors.Is(err, os.ErrNotExist) && follow {
		for errors.Is(err, os.ErrNotExist) {
			if _, done := s.exitCode(id); done {
				break
			}
			time.Sleep(100 * time.Millisecond)
			f, err = os.Open(s.path(id, fileOutput))
		}
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	if f != nil {
		defer f.Close()
	}
	for {
		code, done := s.exitCode(id) // before the read: no output is missed
		if f != nil {
			if _, err := io.Copy(w, f); err != nil {
				return 0, err
			}
		}
		if !follow {
			return 0, nil
		}
		if done {
			return code, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// kill sends sig (a name like TERM or KILL, or a number) to the job's
// process group.
func (s jobs) kill(id, sig string) error {
	j, err := s.get(id)
	if err != nil {
		return err
	}
	if !j.Running {
		return fmt.Errorf("job %s already %s", id, j.Status())
	}
	if j.PID <= 1 {
		return fmt.Errorf("job %s has no process yet", id)
	}
	n, err := parseSignal(sig)
	if err != nil {
		return err
	}
	if err := syscall.Kill(-j.PID, n); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal job %s: %w", id, err)
	}
	return nil
}

var signals = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "KILL": syscall.SIGKILL,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "TERM": syscall.SIGTERM, "STOP": syscall.SIGSTOP, "CONT": syscall.SIGCONT,
}

// parseSignal reads a signal name (TERM, SIGTERM, term) or number.
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	name := s
	if len(name) > 3 && (name[:3] == "SIG" || name[:3] == "sig") {
		name = name[3:]
	}
	for k, v := range signals {
		if strings.EqualFold(k, name) {
			return v, nil
		}
	}
	return 0, fmt.Errorf("%q is not a signal (TERM, KILL, INT, HUP, QUIT, USR1, USR2, STOP, CONT or a number)", s)
}

// CheckSignal reports whether s names a signal the guest end accepts.
func CheckSignal(s string) error { _, err := parseSignal(s); return err }

// lookPath finds a command the way a shell does: as given when it holds a
// slash, else on PATH ("" meaning the working directory).
func lookPath(name string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	if p, err := sysexec.LookIn(name, filepath.SplitList(os.Getenv("PATH"))); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s: command not found", name)
}
