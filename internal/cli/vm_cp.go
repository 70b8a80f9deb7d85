package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/guestjob"
	"github.com/banger-dev/banger/internal/guestssh"
	"github.com/banger-dev/banger/internal/sysexec"
	"github.com/banger-dev/banger/internal/treecopy"
	"github.com/spf13/cobra"
)

// guestAgent is where every banger guest has its agent (the tools disk,
// docs/guest.md): the guest end of 'vm cp'.
const guestAgent = guestjob.AgentPath

func (a *app) vmCpCmd() *cobra.Command {
	var maxSize string
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy a file or a directory between the host and a VM",
		Long: `Copy a file, a symlink or a directory tree into a VM or out of one. NAME:PATH
names a path in VM NAME (a relative PATH is relative to /root); the other
argument is a host path. Exactly one side is a VM.

As cp does: a directory destination receives the source inside it; a
destination that does not exist becomes the copy (its parent must exist); a
file replaces a file. Permission bits and modification times are kept,
symlinks are copied as links, ownership is not kept (the copy belongs to the
user who writes it: root in the guest, you on the host), and setuid/setgid
bits are dropped on the host. A parked VM is woken first.

The copy is one tar stream over SSH; the guest end is the VM's banger-agent
(docs/guest.md). What a guest sends is extracted without following any link
and never outside the destination, up to --max-size.`,
		Example: `  banger vm cp ./config.yaml dev:/etc/app/
  banger vm cp ./project dev:                 # into /root
  banger vm cp dev:/root/project/build ./out
  banger vm cp dev:/var/log/app.log .`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usageError{fmt.Errorf("vm cp needs SRC and DST (got %d arguments)", len(args))}
			}
			return nil
		},
		ValidArgsFunction: a.completeCpArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			limit, err := config.ParseSize(maxSize)
			if err != nil || limit <= 0 {
				return usageError{fmt.Errorf("--max-size %q: want a size like 64G or 512M", maxSize)}
			}
			return a.vmCp(cmd.Context(), args[0], args[1], limit)
		},
	}
	cmd.Flags().StringVar(&maxSize, "max-size", "64G", "the most a copy out of a VM may write on the host")
	return cmd
}

// guestPath splits "NAME:PATH". A path starting with "/" or "." is the
// host's even with a colon in it ("./a:b").
func guestPath(arg string) (vm, path string, ok bool) {
	if strings.HasPrefix(arg, "/") || strings.HasPrefix(arg, ".") {
		return "", "", false
	}
	name, path, found := strings.Cut(arg, ":")
	if !found || name == "" || strings.Contains(name, "/") {
		return "", "", false
	}
	if path == "" {
		path = "."
	}
	return name, path, true
}

func (a *app) vmCp(ctx context.Context, src, dst string, limit int64) error {
	srcVM, srcPath, srcIn := guestPath(src)
	dstVM, dstPath, dstIn := guestPath(dst)
	switch {
	case srcIn && dstIn:
		return usageError{errors.New("vm cp copies between the host and a VM: only one of SRC and DST may be NAME:PATH")}
	case !srcIn && !dstIn:
		return usageError{errors.New("vm cp needs a VM side: write it NAME:PATH (e.g. dev:/root/file)")}
	}
	if !srcIn {
		if _, err := os.Lstat(src); err != nil {
			return fmt.Errorf("vm cp: %w", err)
		}
	}
	name := srcVM
	if dstIn {
		name = dstVM
	}
	c, _, err := a.daemon(ctx)
	if err != nil {
		return err
	}
	var info api.SSHInfo
	if err := a.sshInfo(ctx, c, name, &info); err != nil {
		return err
	}
	if info.State != api.StateRunning {
		return fmt.Errorf("VM %s is %s; start it with 'banger vm start %s'", name, info.State, name)
	}
	p := a.newCopyProgress()
	defer p.stop()
	if dstIn {
		return a.copyIn(ctx, info, name, src, dstPath, p)
	}
	return a.copyOut(ctx, info, name, srcPath, dst, limit, p)
}

// copyIn streams the host's src into the guest's dst.
func (a *app) copyIn(ctx context.Context, info api.SSHInfo, name, src, dst string, p *copyProgress) error {
	pr, pw := io.Pipe()
	packed := make(chan error, 1)
	go func() {
		bw := bufio.NewWriterSize(pw, 256<<10)
		st, err := treecopy.Pack(bw, src, p.add)
		if err == nil {
			err = bw.Flush()
		}
		for _, s := range st.Skipped {
			fmt.Fprintf(a.stderr, "banger: warning: vm cp: %s skipped (not a file, directory or symlink)\n", s)
		}
		pw.CloseWithError(err)
		packed <- err
	}()
	stderr := &guestssh.HeadBuffer{Max: 4096}
	code, err := runIn(ctx, info, []string{guestAgent, "cp", "unpack", dst}, pr, io.Discard, stderr)
	pr.CloseWithError(errGuestEnded)
	// A failure reading the host's files comes first (the guest then saw
	// a cut stream); else the guest end's own line.
	if perr := <-packed; perr != nil && !errors.Is(perr, errGuestEnded) {
		return fmt.Errorf("vm cp: %w", perr)
	}
	return guestCopyResult(name, code, err, stderr.String())
}

// errGuestEnded ends the host's side of a copy whose guest end is gone.
var errGuestEnded = errors.New("the guest end of the copy ended")

// copyOut streams the guest's src to the host's dst.
func (a *app) copyOut(ctx context.Context, info api.SSHInfo, name, src, dst string, limit int64, p *copyProgress) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	type result struct {
		code int
		err  error
	}
	stderr := &guestssh.HeadBuffer{Max: 4096}
	done := make(chan result, 1)
	go func() {
		code, err := runIn(ctx, info, []string{guestAgent, "cp", "pack", src}, nil, pw, stderr)
		pw.Close()
		done <- result{code, err}
	}()
	_, uerr := treecopy.Unpack(bufio.NewReaderSize(pr, 256<<10), dst,
		treecopy.Options{Limits: treecopy.Limits{MaxBytes: limit, MaxEntries: treecopy.DefaultLimits.MaxEntries}, Counted: p.add})
	if uerr != nil {
		cancel() // stop the guest's end
	} else {
		io.Copy(io.Discard, pr) // the stream's end padding: the guest's end finishes writing
	}
	pr.Close()
	r := <-done
	if uerr == nil {
		return guestCopyResult(name, r.code, r.err, stderr.String())
	}
	if r.code > 0 && strings.TrimSpace(stderr.String()) != "" {
		// The guest's end failed first (a missing path: the stream is
		// empty); its line says why.
		return guestCopyResult(name, r.code, nil, stderr.String())
	}
	return fmt.Errorf("vm cp: %w", uerr)
}

// guestCopyResult turns the guest end's exit into an error: its own line,
// or what to do when the agent is too old to copy.
func guestCopyResult(name string, code int, err error, stderr string) error {
	if err != nil {
		return fmt.Errorf("vm cp: %w", err)
	}
	if code == 0 {
		return nil
	}
	return agentModeError("vm cp: ", name, "cp", "copy (it predates 'vm cp')", code, stderr)
}

// agentModeError is a failed run of "banger-agent MODE …" in VM name as one
// line (after prefix): the agent's own "banger-agent: MODE: …" line, or
// what to do when the agent predates MODE (cannot says what it cannot do).
func agentModeError(prefix, name, mode, cannot string, code int, stderr string) error {
	line := strings.TrimSpace(sysexec.LastLines(stderr, 1))
	switch {
	case strings.Contains(line, `unexpected argument "`+mode+`"`) || code == 127:
		return fmt.Errorf("%sVM %s's banger-agent cannot %s; 'banger vm restart %s' gives it the current one", prefix, name, cannot, name)
	case strings.HasPrefix(line, "banger-agent: "+mode+": "):
		return fmt.Errorf("%s%s: %s", prefix, name, printable(strings.TrimPrefix(line, "banger-agent: "+mode+": ")))
	}
	return fmt.Errorf("%s%s: banger-agent %s: exit %d: %s", prefix, name, mode, code, orDash(printable(line)))
}

// copyProgress shows the bytes copied on a terminal, once a copy takes
// longer than a moment.
type copyProgress struct {
	bytes atomic.Int64
	done  chan struct{}
	ended chan struct{}
}

func (a *app) newCopyProgress() *copyProgress {
	p := &copyProgress{done: make(chan struct{}), ended: make(chan struct{})}
	if !output.IsTerminal(a.stderr) {
		close(p.ended)
		return p
	}
	go func() {
		defer close(p.ended)
		start, shown := time.Now(), false
		for {
			select {
			case <-p.done:
				if shown {
					fmt.Fprint(a.stderr, "\r\x1b[K")
				}
				return
			case <-time.After(250 * time.Millisecond):
			}
			if time.Since(start) < time.Second {
				continue
			}
			n := p.bytes.Load()
			rate := float64(n) / time.Since(start).Seconds()
			fmt.Fprintf(a.stderr, "\r\x1b[K%s", output.Dim(a.stderr, fmt.Sprintf("copying: %s (%s/s)", config.FormatSize(n), config.FormatSize(int64(rate)))))
			shown = true
		}
	}()
	return p
}

func (p *copyProgress) add(n int64) { p.bytes.Add(n) }

func (p *copyProgress) stop() {
	select {
	case <-p.done:
	default:
		close(p.done)
	}
	<-p.ended
}

// completeCpArgs completes VM names as "NAME:" and host paths otherwise.
func (a *app) completeCpArgs(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) >= 2 || strings.ContainsAny(toComplete, "/.:") {
		return nil, cobra.ShellCompDirectiveDefault
	}
	names, _ := a.completeNames(api.MethodVMList)(cmd, nil, toComplete)
	for i := range names {
		names[i] += ":"
	}
	return names, cobra.ShellCompDirectiveNoSpace | cobra.ShellCompDirectiveDefault
}
