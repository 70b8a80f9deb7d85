package client

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/buildinfo"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/paths"
)

// DaemonBinary finds bangerd: $BANGER_DAEMON_BIN, else beside the running
// executable, else on PATH.
func DaemonBinary() (string, error) {
	if p := os.Getenv("BANGER_DAEMON_BIN"); p != "" {
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "bangerd")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	p, err := exec.LookPath("bangerd")
	if err != nil {
		return "", errors.New("bangerd not found beside banger or on PATH; build it with 'make build'")
	}
	return p, nil
}

// Ensure returns a client for a daemon that answers and runs this CLI's
// build. In user mode it starts bangerd when none answers, and replaces a
// daemon of another build. In system mode the daemon belongs to systemd.
func Ensure(ctx context.Context, layout paths.Layout, progress func(string)) (*Client, error) {
	c := New(layout.SocketPath())
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	ping, err := c.Ping(pctx)
	cancel()
	mine := buildinfo.Get()
	if err == nil {
		if ping.Build.SameBuild(mine) || layout.Mode == paths.System {
			return c, nil
		}
		if progress != nil {
			progress(fmt.Sprintf("restarting daemon %s to match this CLI (%s)", ping.Build.Version, mine.Version))
		}
		if err := c.stopAndWait(ctx, ping.PID); err != nil {
			return nil, err
		}
	} else if layout.Mode == paths.System {
		return nil, fmt.Errorf("the banger daemon is not answering at %s; run: sudo banger system restart", layout.SocketPath())
	} else if !errors.Is(err, errdefs.ErrUnavailable) {
		return nil, err
	}
	if err := startDaemon(ctx, layout); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Client) stopAndWait(ctx context.Context, pid int) error {
	_ = c.Call(ctx, "daemon.shutdown", nil, nil)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if pid <= 0 || syscall.Kill(pid, 0) != nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("the old daemon (pid %d) did not exit; stop it with 'banger daemon stop'", pid)
}

func startDaemon(ctx context.Context, layout paths.Layout) error {
	bin, err := DaemonBinary()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(layout.StateDir, 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(layout.DaemonLogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer devnull.Close()
	// Errors before the daemon's logger exists go to this pipe so the user
	// sees why it refused to start.
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	cmd := exec.Command(bin)
	cmd.Stdin = devnull
	cmd.Stdout = logf
	cmd.Stderr = pw
	cmd.Env = append(os.Environ(), "BANGER_DAEMON_STDERR_TO_LOG=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return fmt.Errorf("start %s: %w", bin, err)
	}
	pw.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	errText := make(chan string, 1)
	go func() {
		buf := make([]byte, 4096)
		n, _ := pr.Read(buf)
		errText <- string(buf[:n])
	}()
	c := New(layout.SocketPath())
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			msg := ""
			select {
			case msg = <-errText:
			case <-time.After(time.Second):
			}
			if msg = trimLine(msg); msg != "" {
				return errors.New(msg)
			}
			return fmt.Errorf("bangerd exited at start (%v); see %s", err, layout.DaemonLogPath())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(30 * time.Millisecond):
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := c.Ping(pctx)
		cancel()
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("bangerd did not answer on %s within 15s; see %s", layout.SocketPath(), layout.DaemonLogPath())
}

func trimLine(s string) string {
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == '\r') {
		s = s[:len(s)-1]
	}
	const prefix = "bangerd: "
	if len(s) > len(prefix) && s[:len(prefix)] == prefix {
		s = s[len(prefix):]
	}
	return s
}
