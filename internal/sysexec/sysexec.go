// Package sysexec is the one place banger runs external programs. A program
// is run by its argv, never through a shell string, bounded by a context;
// its output is captured or streamed to writers the caller gives; a failure
// is an *Error that names the program, its exit status and the tail of what
// it wrote on stderr, on one line. The package also finds programs (falling
// back to the sbin directories a non-root PATH lacks) and starts detached
// processes such as daemons.
//
// Every package that runs a program imports sysexec, not os/exec: the
// import test in this package enforces it and names the few exceptions
// (VMM launchers that hand an *exec.Cmd to their SDK). Standard library
// only: the guest agent uses it too and stays small. A package whose tests
// should not run real programs keeps a Runner value (Real in production)
// that its tests replace with a sysexectest.Fake.
package sysexec

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Cmd describes one run of a program.
type Cmd struct {
	// Path is the program: a path, or a bare name looked up in PATH (as
	// os/exec does; see LookPath for the sbin fallback).
	Path string
	// Args are its arguments, argv[0] not included.
	Args []string
	// Argv0, when set, is the program's argv[0] instead of Path (a daemon
	// restarted under the title it had).
	Argv0 string
	// Dir is its working directory; "" is the caller's.
	Dir string
	// Env is its whole environment; nil inherits this process's.
	Env []string
	// ExtraEnv is appended to Env (or to the inherited environment).
	ExtraEnv []string
	// Stdin is its standard input; nil is /dev/null.
	Stdin io.Reader
	// Stdout and Stderr receive its output as it is written (an *os.File
	// is handed to the program as it is). nil captures it: into
	// Result.Stdout and Result.Stderr, and the tail into a failure's
	// *Error. With Start, nil is /dev/null.
	Stdout, Stderr io.Writer
	// Cancel stops the program when the context ends before it exits; nil
	// kills it (SIGKILL). Terminate asks it to exit (SIGTERM) instead.
	Cancel func(*os.Process) error
	// WaitDelay bounds the wait, after Cancel, for the program to exit and
	// its output to close; then it is killed. 0 waits without bound.
	WaitDelay time.Duration
	// SysProcAttr holds OS attributes of the new process: a session of its
	// own (Setsid) for a daemon, namespaces, a cgroup.
	SysProcAttr *syscall.SysProcAttr
}

// Result is what a run wrote on the outputs the caller let it capture.
type Result struct {
	Stdout []byte // nil when Cmd.Stdout took it
	Stderr []byte // nil when Cmd.Stderr took it
}

// Runner runs programs. Real starts processes; sysexectest.Fake answers
// from a script in unit tests.
type Runner interface {
	// Run runs c until it exits or ctx ends. It returns the captured
	// output even when it fails; a failure is an *Error.
	Run(ctx context.Context, c Cmd) (Result, error)
}

// Real is the Runner that runs real processes.
var Real Runner = realRunner{}

// Run runs c with Real.
func Run(ctx context.Context, c Cmd) (Result, error) { return Real.Run(ctx, c) }

// Output runs name with args with Real and returns its standard output.
func Output(ctx context.Context, name string, args ...string) ([]byte, error) {
	res, err := Real.Run(ctx, Cmd{Path: name, Args: args})
	return res.Stdout, err
}

// Terminate is a Cmd.Cancel that sends SIGTERM, so the program can clean
// up; pair it with a WaitDelay.
func Terminate(p *os.Process) error { return p.Signal(syscall.SIGTERM) }

type realRunner struct{}

func (realRunner) Run(ctx context.Context, c Cmd) (Result, error) {
	cmd := c.command(ctx)
	var stdout, stderr bytes.Buffer
	if c.Stdout == nil {
		cmd.Stdout = &stdout
	}
	if c.Stderr == nil {
		cmd.Stderr = &stderr
	}
	err := cmd.Run()
	var res Result
	if c.Stdout == nil {
		res.Stdout = stdout.Bytes()
	}
	if c.Stderr == nil {
		res.Stderr = stderr.Bytes()
	}
	if err != nil {
		e := &Error{Argv: c.Argv(), Err: err, Code: -1, Started: cmd.Process != nil}
		if cmd.ProcessState != nil {
			e.Code = cmd.ProcessState.ExitCode()
		}
		if ctx.Err() != nil {
			e.Err = ctx.Err()
		}
		e.Stderr = failureText(res.Stdout, res.Stderr)
		return res, e
	}
	return res, nil
}

// Argv is the program and its arguments as Error names them: Path, then
// Args.
func (c Cmd) Argv() []string { return append([]string{c.Path}, c.Args...) }

// command builds the exec.Cmd for a run of c bounded by ctx.
func (c Cmd) command(ctx context.Context) *exec.Cmd {
	cmd := c.fill(exec.CommandContext(ctx, c.Path, c.Args...))
	if c.Cancel != nil {
		cmd.Cancel = func() error { return c.Cancel(cmd.Process) }
	}
	cmd.WaitDelay = c.WaitDelay
	return cmd
}

// fill sets what c says on cmd, made for c.Path and c.Args.
func (c Cmd) fill(cmd *exec.Cmd) *exec.Cmd {
	if c.Argv0 != "" {
		cmd.Args[0] = c.Argv0
	}
	cmd.Dir = c.Dir
	cmd.Env = c.Env
	if len(c.ExtraEnv) > 0 {
		base := c.Env
		if base == nil {
			base = os.Environ()
		}
		cmd.Env = append(append([]string(nil), base...), c.ExtraEnv...)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = c.Stdin, c.Stdout, c.Stderr
	cmd.SysProcAttr = c.SysProcAttr
	return cmd
}

// ExecCmd builds the *exec.Cmd for c, without a context, for a library
// that starts and watches the program itself (firecracker-go-sdk's
// WithProcessRunner). Everything else uses Run or Start.
func (c Cmd) ExecCmd() *exec.Cmd { return c.fill(exec.Command(c.Path, c.Args...)) }

// Process is a program started by Start.
type Process struct {
	Pid  int
	cmd  *exec.Cmd
	argv []string
}

// Start starts c without waiting for it and without a context: the
// program lives until it exits or is signalled (a daemon: give it a
// session of its own with SysProcAttr Setsid). Unset outputs are
// /dev/null. Call Wait to reap it.
func Start(c Cmd) (*Process, error) {
	cmd := c.fill(exec.Command(c.Path, c.Args...))
	if err := cmd.Start(); err != nil {
		return nil, &Error{Argv: c.Argv(), Err: err, Code: -1}
	}
	return &Process{Pid: cmd.Process.Pid, cmd: cmd, argv: c.Argv()}, nil
}

// Wait waits for the program to exit and reaps it; a failure is an *Error
// (without output: Start captures none).
func (p *Process) Wait() error {
	err := p.cmd.Wait()
	if err == nil {
		return nil
	}
	e := &Error{Argv: p.argv, Err: err, Code: -1, Started: true}
	if p.cmd.ProcessState != nil {
		e.Code = p.cmd.ProcessState.ExitCode()
	}
	return e
}

// ErrNotFound is what LookPath and its kin wrap when no program matches.
var ErrNotFound = exec.ErrNotFound
