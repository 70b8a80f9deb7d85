package updater

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/client"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/sysexec"
	"github.com/banger-dev/banger/internal/sysinstall"
)

// Host is what an update does outside the files it swaps: systemd, the
// system sockets, and the programs it runs (the staged and the installed
// banger and bangerd). SystemHost is the real one; tests use a fake.
type Host interface {
	// Systemctl runs systemctl with args.
	Systemctl(ctx context.Context, args ...string) error
	// WaitVersion waits, up to timeout, until the root helper and the
	// daemon answer on their sockets and the daemon reports version.
	WaitVersion(ctx context.Context, version string, timeout time.Duration) error
	// Run runs program with args, its standard output to stdout and its
	// standard error to stderr (the same writer for both interleaves
	// them). A non-zero exit status is an error with an ExitCode() int
	// method.
	Run(ctx context.Context, stdout, stderr io.Writer, program string, args ...string) error
}

// SystemHost is the Host of a real update: systemctl
// (sysinstall.ExecSystemd), the installed system's sockets, and programs
// run through internal/sysexec.
type SystemHost struct {
	sysinstall.ExecSystemd
}

// WaitVersion implements Host.
func (SystemHost) WaitVersion(ctx context.Context, version string, timeout time.Duration) error {
	if err := sysinstall.WaitReady(ctx, timeout); err != nil {
		return err
	}
	var p api.PingResult
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := client.New(paths.SystemLayout().SocketPath()).Call(pctx, api.MethodPing, nil, &p); err != nil {
		return err
	}
	if p.Build.Version != version {
		return fmt.Errorf("daemon answers with %s, not %s", p.Build.Version, version)
	}
	return nil
}

// Run implements Host.
func (SystemHost) Run(ctx context.Context, stdout, stderr io.Writer, program string, args ...string) error {
	_, err := sysexec.Run(ctx, sysexec.Cmd{Path: program, Args: args, Stdout: stdout, Stderr: stderr})
	return err
}
