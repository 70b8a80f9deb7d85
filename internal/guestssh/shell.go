package guestssh

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/crypto/ssh"
	"golang.org/x/term"
)

// Shell runs an interactive login shell in the guest, for when no system ssh
// client is installed (see SystemSSHArgs). If stdin is a terminal, a pty is
// requested with its size and $TERM (xterm-256color if unset), the local
// terminal is put in raw mode for the session and restored afterwards, and
// window size changes are forwarded. Otherwise the remote shell reads
// commands from stdin without a pty. Exit status and ctx handling are Run's.
func (c *Client) Shell(ctx context.Context, stdin *os.File, stdout, stderr io.Writer) (int, error) {
	return c.ShellIn(ctx, "", stdin, stdout, stderr)
}

// ShellIn is Shell starting in directory dir of the guest ("" = home): a
// login shell run as `cd DIR && exec "$SHELL" -l`.
func (c *Client) ShellIn(ctx context.Context, dir string, stdin *os.File, stdout, stderr io.Writer) (int, error) {
	start := func(s *ssh.Session) error { return s.Shell() }
	if dir != "" {
		cmd := ShellInCommand(dir)
		start = func(s *ssh.Session) error { return s.Start(cmd) }
	}
	fd := int(stdin.Fd())
	if !term.IsTerminal(fd) {
		return c.session(ctx, stdin, stdout, stderr, start)
	}

	width, height, err := term.GetSize(fd)
	if err != nil || width <= 0 || height <= 0 {
		width, height = 80, 24
	}
	termType := os.Getenv("TERM")
	if termType == "" {
		termType = "xterm-256color"
	}
	old, err := term.MakeRaw(fd)
	if err != nil {
		return -1, err
	}
	defer term.Restore(fd, old)

	stopWinch := make(chan struct{})
	defer close(stopWinch)
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)

	return c.session(ctx, stdin, stdout, stderr, func(s *ssh.Session) error {
		modes := ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}
		if err := s.RequestPty(termType, height, width, modes); err != nil {
			return err
		}
		go func() {
			for {
				select {
				case <-stopWinch:
					return
				case <-winch:
					if w, h, err := term.GetSize(fd); err == nil {
						s.WindowChange(h, w)
					}
				}
			}
		}()
		return start(s)
	})
}

// ShellInCommand is the remote command of a login shell in dir.
func ShellInCommand(dir string) string {
	return "cd " + quoteWord(dir) + ` && exec "${SHELL:-/bin/sh}" -l`
}
