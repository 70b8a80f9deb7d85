package sysexec

import (
	"context"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// How much of a failed program's output an Error keeps.
const (
	TailLines = 4    // the last lines
	TailBytes = 2048 // at most this many bytes of them
)

// maxCommandLine bounds the command line an Error prints.
const maxCommandLine = 200

// Error is a run that failed: the program could not be started, exited
// with a non-zero status, was killed, or the context ended it. Its text is
// one line: "prog args: exit status 1: last | lines | of stderr".
type Error struct {
	// Argv is the program and its arguments.
	Argv []string
	// Started reports that the program ran; false means it could not be
	// started (Err says why).
	Started bool
	// Code is the exit status; -1 when the program did not exit by itself
	// (a signal, the context) or did not start.
	Code int
	// Err is the cause: os/exec's exit or start error, or the context's
	// error when the context ended the run.
	Err error
	// Stderr is the tail (TailLines, TailBytes) of what the program wrote
	// on stderr, or on stdout when stderr was empty; "" when the caller's
	// writers took both.
	Stderr string
}

// Failed is the Error of a run of argv that exited with code after
// writing stdout and stderr; fakes use it to fail as a real run does.
func Failed(argv []string, code int, stdout, stderr []byte) *Error {
	return &Error{Argv: argv, Started: true, Code: code, Err: errors.New("exit status " + strconv.Itoa(code)),
		Stderr: failureText(stdout, stderr)}
}

func (e *Error) Error() string {
	cause := "failed"
	if e.Err != nil {
		cause = e.Err.Error()
	}
	// os/exec's start errors name the program already; a context that
	// ended before the start does not.
	if !e.Started && e.Err != nil && !errors.Is(e.Err, context.Canceled) && !errors.Is(e.Err, context.DeadlineExceeded) {
		return OneLine(cause)
	}
	s := commandLine(e.Argv) + ": " + cause
	if t := OneLine(e.Stderr); t != "" {
		s += ": " + t
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// failureText is the tail of stderr, or of stdout when stderr is empty.
func failureText(stdout, stderr []byte) string {
	t := LastLines(string(stderr), TailLines)
	if t == "" {
		t = LastLines(string(stdout), TailLines)
	}
	return t
}

// commandLine renders argv for a message: the program's base name, then
// the arguments, quoted when empty or holding spaces, quotes or control
// characters, cut at about 200 bytes.
func commandLine(argv []string) string {
	if len(argv) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString(filepath.Base(argv[0]))
	for _, a := range argv[1:] {
		b.WriteByte(' ')
		if a == "" || strings.ContainsFunc(a, func(r rune) bool { return unicode.IsSpace(r) || r == '"' || r == '\'' || !unicode.IsPrint(r) }) {
			a = strconv.Quote(a)
		}
		b.WriteString(a)
		if b.Len() > maxCommandLine {
			return truncate(b.String(), maxCommandLine) + " …"
		}
	}
	return b.String()
}

// LastLines returns the last n lines of s, trailing blank lines and
// white space dropped, at most TailBytes long (cut at the front, marked
// with "…").
func LastLines(s string, n int) string {
	s = strings.TrimRightFunc(s, unicode.IsSpace)
	if s == "" || n <= 0 {
		return ""
	}
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	t := strings.Join(lines, "\n")
	if len(t) > TailBytes {
		cut := len(t) - TailBytes + len("…")
		for cut < len(t) && !utf8.RuneStart(t[cut]) {
			cut++
		}
		t = "…" + t[cut:]
	}
	return t
}

// OneLine puts s on one line: its non-blank lines, each with its runs of
// white space collapsed, joined by " | ", other control characters and
// invalid UTF-8 shown as '?'.
func OneLine(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			parts = append(parts, strings.Join(f, " "))
		}
	}
	return strings.Map(func(r rune) rune {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, strings.Join(parts, " | "))
}

// truncate cuts s to at most n bytes on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
