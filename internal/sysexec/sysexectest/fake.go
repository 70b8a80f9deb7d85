// Package sysexectest is a fake sysexec.Runner for unit tests: it records
// every run and answers from a script instead of starting programs, so a
// test can check the argv a package builds and how it handles the output
// and failures of a program the test machine may not have.
package sysexectest

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"

	"github.com/banger-dev/banger/internal/sysexec"
)

// Reply is what a faked program does.
type Reply struct {
	Stdout, Stderr string
	// Code is the exit status; non-zero fails the run with the *sysexec.Error
	// a real run would give (sysexec.Failed).
	Code int
	// Err, when set, means the program could not be started: the run fails
	// with a *sysexec.Error (not Started) wrapping it.
	Err error
}

// Call is one recorded run.
type Call struct {
	sysexec.Cmd
	// Stdin is what the run's Cmd.Stdin held.
	Stdin []byte
}

// Fake is a sysexec.Runner that runs nothing. The zero value fails every
// run; On scripts replies per program. It is safe for concurrent use.
type Fake struct {
	// Default answers a run when On has no reply (left) for its program;
	// nil fails such a run with an error naming its argv.
	Default func(c sysexec.Cmd) Reply

	mu      sync.Mutex
	calls   []Call
	replies map[string][]Reply
}

// On queues replies for the runs of prog, matched by its base name
// ("apt-cache" matches /usr/bin/apt-cache), in order; the last one repeats.
func (f *Fake) On(prog string, replies ...Reply) *Fake {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.replies == nil {
		f.replies = map[string][]Reply{}
	}
	f.replies[filepath.Base(prog)] = append(f.replies[filepath.Base(prog)], replies...)
	return f
}

// Run implements sysexec.Runner: it records c, then answers with the next
// reply scripted for its program, as a real run would (output to the
// Cmd's writers or captured, a *sysexec.Error on failure).
func (f *Fake) Run(ctx context.Context, c sysexec.Cmd) (sysexec.Result, error) {
	call := Call{Cmd: c}
	if c.Stdin != nil {
		b, err := io.ReadAll(c.Stdin)
		if err != nil {
			return sysexec.Result{}, err
		}
		call.Stdin = b
	}
	r, ok := f.record(call)
	if !ok {
		if f.Default == nil {
			return sysexec.Result{}, &sysexec.Error{Argv: c.Argv(), Code: -1,
				Err: fmt.Errorf("sysexectest: nothing scripted for %q", strings.Join(c.Argv(), " "))}
		}
		r = f.Default(c)
	}
	if err := ctx.Err(); err != nil {
		return sysexec.Result{}, &sysexec.Error{Argv: c.Argv(), Code: -1, Err: err}
	}
	if r.Err != nil {
		return sysexec.Result{}, &sysexec.Error{Argv: c.Argv(), Code: -1, Err: r.Err}
	}
	var res sysexec.Result
	if c.Stdout != nil {
		io.WriteString(c.Stdout, r.Stdout)
	} else {
		res.Stdout = []byte(r.Stdout)
	}
	if c.Stderr != nil {
		io.WriteString(c.Stderr, r.Stderr)
	} else {
		res.Stderr = []byte(r.Stderr)
	}
	if r.Code != 0 {
		return res, sysexec.Failed(c.Argv(), r.Code, res.Stdout, res.Stderr)
	}
	return res, nil
}

// record appends the call and pops the program's next reply.
func (f *Fake) record(call Call) (Reply, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
	prog := filepath.Base(call.Path)
	q := f.replies[prog]
	if len(q) == 0 {
		return Reply{}, false
	}
	if len(q) > 1 {
		f.replies[prog] = q[1:]
	}
	return q[0], true
}

// Calls returns the runs so far, in order.
func (f *Fake) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Call(nil), f.calls...)
}

// Argvs returns each run's argv joined by spaces, in order: the easy thing
// to compare.
func (f *Fake) Argvs() []string {
	var out []string
	for _, c := range f.Calls() {
		out = append(out, strings.Join(c.Argv(), " "))
	}
	return out
}
