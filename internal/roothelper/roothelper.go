// Package roothelper is bangerd's root-helper mode: a root process serving
// privops' fixed operation list on its own Unix socket. Only root and the
// owner UID may call it (SO_PEERCRED); every request is validated by
// privops before anything runs. An exclusive lock keeps a second helper from
// serving beside a hung one.
package roothelper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/buildinfo"
	"github.com/banger-dev/banger/internal/privops"
	"github.com/banger-dev/banger/internal/rpcserver"
	"github.com/banger-dev/banger/internal/safesock"
	"golang.org/x/sys/unix"
)

// Options configure a helper.
type Options struct {
	Socket   string
	LockFile string
	OwnerUID int
	OwnerGID int
	Policy   privops.Policy
	Log      *slog.Logger
	// SocketMode is the socket's mode (0600 unless a test widens it to
	// exercise the peer-credential check).
	SocketMode os.FileMode
}

// Helper is a running root helper.
type Helper struct {
	opts Options
	srv  *rpcserver.Server
	ops  *privops.Local
	lock *os.File
	ln   *net.UnixListener
}

// New takes the lock, binds the socket and registers the operations.
func New(opts Options) (*Helper, error) {
	if opts.SocketMode == 0 {
		opts.SocketMode = 0o600
	}
	lock, err := takeLock(opts.LockFile)
	if err != nil {
		return nil, err
	}
	ln, err := safesock.Listen(opts.Socket)
	if err != nil {
		lock.Close()
		return nil, err
	}
	if err := os.Chmod(opts.Socket, opts.SocketMode); err != nil {
		ln.Close()
		lock.Close()
		return nil, err
	}
	if opts.OwnerUID != 0 {
		if err := os.Chown(opts.Socket, opts.OwnerUID, opts.OwnerGID); err != nil {
			ln.Close()
			lock.Close()
			return nil, err
		}
	}
	allowed := []uint32{0}
	if opts.OwnerUID != 0 {
		allowed = append(allowed, uint32(opts.OwnerUID))
	}
	h := &Helper{opts: opts, lock: lock, ln: ln, ops: &privops.Local{Policy: opts.Policy}}
	h.srv = rpcserver.New(opts.Log, allowed...)
	h.register()
	return h, nil
}

// takeLock holds an exclusive flock for the helper's lifetime. A second
// helper (for instance one started by systemd beside a hung one, since the
// unit never SIGKILLs) refuses to start and names the holder.
func takeLock(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		return nil, fmt.Errorf("another root helper holds %s (pid %s); stop it first", path, strings.TrimSpace(string(b)))
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}

func (h *Helper) register() {
	o := h.ops
	h.srv.Handle(api.MethodPing, func(ctx context.Context, _ json.RawMessage) (any, error) {
		return api.PingResult{Build: buildinfo.Get(), PID: os.Getpid()}, nil
	})
	h.srv.Handle(privops.MethodEnsureBridge, rpcserver.TypedNoResult(o.EnsureBridge))
	h.srv.Handle(privops.MethodCreateTap, rpcserver.TypedNoResult(o.CreateTap))
	h.srv.Handle(privops.MethodDeleteTap, rpcserver.TypedNoResult(o.DeleteTap))
	h.srv.Handle(privops.MethodListTaps, rpcserver.NoParams(o.ListTaps))
	h.srv.Handle(privops.MethodAddNAT, rpcserver.TypedNoResult(o.AddNAT))
	h.srv.Handle(privops.MethodRemoveNAT, rpcserver.TypedNoResult(o.RemoveNAT))
	h.srv.Handle(privops.MethodPrepareDisks, rpcserver.Typed(o.PrepareDisks))
	h.srv.Handle(privops.MethodRemoveVMDir, rpcserver.TypedNoResult(o.RemoveVMDir))
	h.srv.Handle(privops.MethodLaunchVMM, rpcserver.Typed(o.LaunchVMM))
	h.srv.Handle(privops.MethodKillVMM, rpcserver.TypedNoResult(o.KillVMM))
	h.srv.Handle(privops.MethodStatusVMM, rpcserver.Typed(o.StatusVMM))
	h.srv.Handle(privops.MethodCtrlAltDel, rpcserver.TypedNoResult(o.CtrlAltDel))
	h.srv.Handle(privops.MethodClearRuntime, rpcserver.TypedNoResult(o.ClearRuntime))
	h.srv.Handle(privops.MethodReleaseRootfs, rpcserver.TypedNoResult(o.ReleaseRootfs))
	h.srv.Handle(privops.MethodPauseVMM, rpcserver.TypedNoResult(o.PauseVMM))
	h.srv.Handle(privops.MethodSnapshotVMM, rpcserver.Typed(o.SnapshotVMM))
	h.srv.Handle(privops.MethodRestoreVMM, rpcserver.Typed(o.RestoreVMM))
	h.srv.Handle(privops.MethodDiscardSnapshot, rpcserver.TypedNoResult(o.DiscardSnapshot))
	h.srv.Handle(privops.MethodForkDisks, rpcserver.Typed(o.ForkDisks))
}

// Methods lists the served methods.
func (h *Helper) Methods() []string { return h.srv.Methods() }

// Serve serves until ctx ends, then drains.
func (h *Helper) Serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- h.srv.Serve(h.ln) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h.srv.Shutdown(sctx)
	h.lock.Close()
	return err
}

// Main runs the helper until SIGTERM/SIGINT. VMMs it launched keep running:
// they live in their own sessions and no signal is forwarded to them.
func Main(opts Options, stderr io.Writer) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(stderr, "bangerd: the root helper must run as root")
		return 1
	}
	if err := os.MkdirAll(filepath.Dir(opts.Socket), 0o711); err != nil {
		fmt.Fprintf(stderr, "bangerd: %v\n", err)
		return 1
	}
	h, err := New(opts)
	if err != nil {
		fmt.Fprintf(stderr, "bangerd: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	opts.Log.Info("root helper started", "version", buildinfo.Version, "pid", os.Getpid(), "socket", opts.Socket, "owner_uid", opts.OwnerUID)
	if err := h.Serve(ctx); err != nil && !errors.Is(err, net.ErrClosed) {
		opts.Log.Error("serve failed", "error", err)
		return 1
	}
	opts.Log.Info("root helper stopped")
	return 0
}
