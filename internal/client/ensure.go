package client

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/buildinfo"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/safesock"
	"github.com/banger-dev/banger/internal/sysexec"
	"golang.org/x/sys/unix"
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
	p, err := sysexec.LookPath("bangerd")
	if err != nil {
		return "", errors.New("bangerd not found beside banger or on PATH; build it with 'make build'")
	}
	return p, nil
}

// AutostartLockName is the lock file, beside the socket in the private
// runtime dir, that serialises starting and replacing the user-mode daemon.
const AutostartLockName = "bangerd.autostart.lock"

// autostartLockWait bounds how long a CLI waits for another one that is
// starting (or replacing) the daemon: stopping an old daemon (15 s) plus
// starting a new one (15 s), with margin.
const autostartLockWait = 45 * time.Second

// Ensure returns a client for a daemon that answers and runs this CLI's
// build. In user mode it starts bangerd when none answers, and replaces a
// daemon of another build. In system mode the daemon belongs to systemd.
//
// Starting and replacing happen only under the auto-start lock, and only
// after re-checking, under the lock, that no daemon of this build answers:
// CLIs started at once on a fresh HOME start exactly one daemon, and a
// daemon of another build is replaced exactly once.
func Ensure(ctx context.Context, layout paths.Layout, progress func(string)) (*Client, error) {
	c := New(layout.SocketPath())
	mine := buildinfo.Get()
	ping, err := c.quickPing(ctx)
	if err == nil && (ping.Build.SameBuild(mine) || layout.Mode == paths.System) {
		return c, nil
	}
	if err != nil && layout.Mode == paths.System {
		return nil, fmt.Errorf("the banger daemon is not answering at %s; run: sudo banger system restart", layout.SocketPath())
	}
	if err != nil && !mayStart(ctx, err) {
		return nil, err
	}
	unlock, err := lockAutostart(ctx, layout)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Another CLI may have started or replaced the daemon while we waited.
	ping, err = c.quickPing(ctx)
	switch {
	case err == nil && ping.Build.SameBuild(mine):
		return c, nil
	case err == nil:
		if progress != nil {
			progress(fmt.Sprintf("restarting daemon %s to match this CLI (%s)", ping.Build.Version, mine.Version))
		}
		if err := c.stopAndWait(ctx, ping.PID); err != nil {
			return nil, err
		}
	case !mayStart(ctx, err):
		return nil, err
	}
	if err := startDaemon(ctx, layout); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Client) quickPing(ctx context.Context) (api.PingResult, error) {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return c.Ping(pctx)
}

// mayStart reports whether a failed ping means "no daemon here (yet)": the
// socket does not answer, or a daemon that has bound it is not serving yet
// (the ping timed out while the caller's context is still alive).
func mayStart(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	return errors.Is(err, errdefs.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded)
}

// lockAutostart takes the exclusive auto-start lock: flock on
// <runtime>/bangerd.autostart.lock. The runtime dir is created and checked
// private first (as bangerd does), pinned by a descriptor that is re-checked,
// and the lock file is opened relative to it without following a symlink.
// The descriptor is close-on-exec, so the daemon started under the lock
// does not inherit (and hold) it.
func lockAutostart(ctx context.Context, layout paths.Layout) (func(), error) {
	dir := layout.RuntimeDir
	if err := paths.EnsurePrivateDir(dir); err != nil {
		return nil, fmt.Errorf("refusing to start bangerd: %w", err)
	}
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("refusing to start bangerd: open runtime dir %s: %w", dir, err)
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstat(dfd, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", dir, err)
	}
	if int(st.Uid) != os.Geteuid() || st.Mode&0o077 != 0 {
		return nil, fmt.Errorf("refusing to start bangerd: %w: %s changed under us (uid %d, mode %04o)", paths.ErrUnsafeDir, dir, st.Uid, st.Mode&0o7777)
	}
	lockPath := filepath.Join(dir, AutostartLockName)
	fd, err := unix.Openat(dfd, AutostartLockName, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0o600)
	if err != nil {
		return nil, fmt.Errorf("refusing to start bangerd: open lock %s: %w (remove it and retry)", lockPath, err)
	}
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || int(st.Uid) != os.Geteuid() {
		unix.Close(fd)
		return nil, fmt.Errorf("refusing to start bangerd: lock %s is not a regular file of yours (remove it and retry)", lockPath)
	}
	deadline := time.Now().Add(autostartLockWait)
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			unix.Close(fd)
			return nil, fmt.Errorf("lock %s: %w", lockPath, err)
		}
		if time.Now().After(deadline) {
			unix.Close(fd)
			return nil, fmt.Errorf("another banger has been starting the daemon for %s (lock %s); see %s", autostartLockWait, lockPath, layout.DaemonLogPath())
		}
		select {
		case <-ctx.Done():
			unix.Close(fd)
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return func() {
		_ = unix.Flock(fd, unix.LOCK_UN)
		unix.Close(fd)
	}, nil
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
	p, err := sysexec.Start(sysexec.Cmd{Path: bin, Stdin: devnull, Stdout: logf, Stderr: pw,
		ExtraEnv: []string{"BANGER_DAEMON_STDERR_TO_LOG=1"}, SysProcAttr: &syscall.SysProcAttr{Setsid: true}})
	if err != nil {
		pw.Close()
		return fmt.Errorf("start %s: %w", bin, err)
	}
	pw.Close()
	exited := make(chan error, 1)
	go func() { exited <- p.Wait() }()
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
			exited = nil
			msg := ""
			select {
			case msg = <-errText:
			case <-time.After(time.Second):
			}
			msg = trimLine(msg)
			// A daemon that was started without the lock (by hand, or by a
			// CLI killed while it waited) got the socket first: wait for it
			// to answer rather than fail.
			if strings.HasPrefix(msg, safesock.ErrInUse.Error()) || strings.Contains(msg, "address already in use") {
				continue
			}
			if msg != "" {
				return errors.New(msg)
			}
			// Wait's *sysexec.Error names bangerd again: its cause alone.
			return fmt.Errorf("bangerd exited at start (%v); see %s", errors.Unwrap(err), layout.DaemonLogPath())
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
