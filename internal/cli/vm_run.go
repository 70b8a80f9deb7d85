package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/banger-dev/banger/internal/client"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/guestssh"
	"github.com/banger-dev/banger/internal/imagespec"
	"github.com/banger-dev/banger/internal/sysexec"
	"github.com/banger-dev/banger/internal/workspace"
	"github.com/spf13/cobra"
)

// vmRunFlags are the flags of 'vm run'.
type vmRunFlags struct {
	create                  createFlags
	rm, detach, noBootstrap bool
	ws                      wsFlags
}

func (a *app) vmRunCmd() *cobra.Command {
	var fl vmRunFlags
	cmd := &cobra.Command{
		Use:   "run [PATH] [-- CMD [ARG...]]",
		Short: "Create and boot a fresh VM, then open a shell or run a command",
		Long: `Create and boot a fresh VM, then:
  - with no command: open an interactive SSH shell (the VM keeps running
    when you leave; 'banger vm stop NAME' stops it);
  - with '-- CMD': run CMD in the guest and exit with its exit code
    (128+N when it is killed by signal N).

With PATH (inside a git repository) holding .banger/image.toml and no
--image, the repository's derived image is built first (or reused while the
file and what it copies are unchanged; docs/devbox.md).

With PATH (inside a git repository), the repository is copied to
/root/<repo name> (--guest-path to change) with its real history — a shallow
clone of HEAD with your working tree laid over it, so 'git status' and
'git diff' in the guest show your changes — and the command runs there.
Only git-tracked files are copied; --include-untracked adds untracked files
git does not ignore; ignored files (.env, credentials) are never copied.
Submodules need --full-copy (the repository's own .git, all history).
--branch creates a guest-only branch (at --from, when given). Without a
command, the shell opens in the repository.

A repository that pins toolchains for mise (.mise.toml, mise.toml or
.tool-versions) gets them installed first ('mise trust', 'mise install';
output in /root/.banger/bootstrap.log) and the command runs under 'mise
exec --'. That downloads the tools, so it needs --nat; --no-bootstrap skips it.

--rm deletes the VM afterwards whatever the exit code, except when the guest
never came up: then the VM is kept so 'banger vm logs NAME' can show why.`,
		Example: `  banger vm run
  banger vm run ./repo -- make test                 # exit code of make
  banger vm run --nat ./repo -- npm test            # installs the repo's .mise.toml tools first
  banger vm run --rm --include-untracked . -- git status
  banger vm run --dry-run .                         # list what would be copied
  banger vm run . --branch experiment               # shell in the repo, on a guest-only branch
  banger vm run --rm -- sh -c 'exit 42'; echo $?     # 42
  banger vm run --name scratch --nat -- apt-get update   # --nat: outbound network
  banger vm run -d --name bg                        # create and boot, then return`,
		Args: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			if (dash == -1 && len(args) > 1) || dash > 1 {
				return usageError{fmt.Errorf("vm run takes at most one PATH before '--' (got %q)", args)}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.vmRun(cmd, args, &fl)
		},
	}
	fl.create.add(cmd)
	cmd.Flags().BoolVar(&fl.rm, "rm", false, "delete the VM when the shell or command ends")
	cmd.Flags().BoolVarP(&fl.detach, "detach", "d", false, "create and boot the VM, then return")
	cmd.Flags().BoolVar(&fl.noBootstrap, "no-bootstrap", false, "with PATH: do not install the repository's mise toolchains")
	fl.ws.add(cmd, "with PATH: ")
	return cmd
}

// vmRunPlan is what 'vm run' settles before any VM exists: the create
// parameters and, with PATH, the workspace, where it goes in the guest and
// whether its toolchains are bootstrapped.
type vmRunPlan struct {
	params    api.VMCreateParams
	ws        *workspace.Workspace
	guestPath string
	bootstrap bool
}

// vmRun is 'vm run': check the flags, plan (and refuse) before anything
// exists, create the VM (deleted afterwards with --rm), put the workspace in
// it, then run the command or open the shell.
func (a *app) vmRun(cmd *cobra.Command, args []string, fl *vmRunFlags) error {
	ctx := cmd.Context()
	path, args := splitRunPath(cmd, args)
	if fl.detach && (fl.rm || len(args) > 0) {
		return usageError{errors.New("-d cannot be combined with --rm or a command")}
	}
	if a.kubeContext != "" {
		return a.vmRunKube(cmd, path, args, fl)
	}
	plan, done, err := a.planVMRun(ctx, path, fl.create.params(cmd), fl)
	if err != nil || done {
		return err
	}
	c, _, err := a.daemon(ctx)
	if err != nil {
		return err
	}
	if err := a.useDerivedImage(ctx, &plan); err != nil {
		return err
	}
	v, err := a.createRunVM(ctx, c, plan.params)
	if err != nil {
		return err // a guest that never came up is kept; the error says how to read its logs
	}
	if fl.rm {
		defer a.deleteRunVM(c, v.Name)
	}
	if args, err = a.prepareRunVM(ctx, c, v.Name, plan, args); err != nil {
		return err
	}
	if fl.detach {
		fmt.Fprintf(a.stdout, "%s running (%s); 'banger vm ssh %s' to connect\n", v.Name, v.IP, v.Name)
		return nil
	}
	return a.runInRunVM(ctx, c, v.Name, plan, args, !fl.rm)
}

// splitRunPath separates the optional PATH of 'vm run' (the one argument
// before '--', or the only argument) from the command.
func splitRunPath(cmd *cobra.Command, args []string) (path string, rest []string) {
	if dash := cmd.ArgsLenAtDash(); (dash == -1 && len(args) == 1) || dash == 1 {
		return args[0], args[1:]
	}
	return "", args
}

// planVMRun inspects PATH's workspace (printing it and reporting done with
// --dry-run) and refuses a bootstrap the guest could not do, all before any
// VM exists. --dry-run without PATH is a usage error.
func (a *app) planVMRun(ctx context.Context, path string, params api.VMCreateParams, fl *vmRunFlags) (plan vmRunPlan, done bool, err error) {
	plan.params = params
	if path == "" {
		if fl.ws.dryRun {
			return plan, false, usageError{errors.New("--dry-run needs a PATH: it lists the files a workspace run would copy")}
		}
		return plan, false, nil
	}
	if plan.ws, plan.guestPath, done, err = a.planWorkspace(ctx, path, fl.ws); err != nil || done {
		return plan, done, err
	}
	// Refused here, before any VM exists.
	if plan.bootstrap, err = checkBootstrap(plan.ws, plan.params.NAT, fl.noBootstrap); err != nil {
		return plan, false, err
	}
	return plan, false, nil
}

// useDerivedImage, for a workspace run without --image whose repository
// holds .banger/image.toml, builds (or reuses) the repository's own image
// and creates the VM from it.
func (a *app) useDerivedImage(ctx context.Context, plan *vmRunPlan) error {
	if plan.ws == nil || plan.params.Image != "" {
		return nil
	}
	if _, err := os.Lstat(filepath.Join(plan.ws.Root, imagespec.File)); err != nil {
		return nil
	}
	r, err := a.deriveImage(ctx, plan.ws.Root)
	if err != nil {
		return err
	}
	if r.Built {
		fmt.Fprintf(a.stderr, "%s\n", output.Dim(a.stderr, fmt.Sprintf("built image %s from %s in %.0fs", r.Image.Name, r.File, r.Seconds)))
	}
	plan.params.Image = r.Image.Name
	return nil
}

// createRunVM creates and boots the VM, with the progress display, and
// prints its warnings.
func (a *app) createRunVM(ctx context.Context, c *client.Client, p api.VMCreateParams) (api.VM, error) {
	var v api.VM
	err := a.withProgress(ctx, c, "creating VM", func(ctx context.Context) error {
		return c.Call(ctx, api.MethodVMCreate, p, &v)
	})
	if err != nil {
		return v, err
	}
	a.printWarnings(v.Warnings)
	return v, nil
}

// deleteRunVM is --rm's cleanup: it deletes the VM with a fresh context
// (Ctrl-C must not abort it), and only reports a failure.
func (a *app) deleteRunVM(c *client.Client, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.Call(ctx, api.MethodVMDelete, api.VMRef{Name: name}, nil); err != nil {
		a.printError(fmt.Errorf("could not delete VM %s: %w", name, err))
	}
}

// prepareRunVM copies the workspace into the VM and bootstraps its
// toolchains, returning the command to run under mise when it was.
func (a *app) prepareRunVM(ctx context.Context, c *client.Client, vm string, plan vmRunPlan, args []string) ([]string, error) {
	if plan.ws != nil {
		if err := a.copyWorkspace(ctx, c, vm, plan.ws, plan.guestPath); err != nil {
			return args, err
		}
	}
	if plan.bootstrap {
		if err := a.bootstrapToolchains(ctx, c, vm, plan.guestPath); err != nil {
			return args, err
		}
		if len(args) > 0 {
			args = underMise(args)
		}
	}
	return args, nil
}

// runInRunVM runs the command (in the workspace, with PATH) or opens the
// shell (in the workspace, with PATH), and passes its exit code on; remind
// says the VM is still running after an interactive shell.
func (a *app) runInRunVM(ctx context.Context, c *client.Client, vm string, plan vmRunPlan, args []string, remind bool) error {
	if plan.ws != nil && len(args) > 0 {
		args = append([]string{"sh", "-c", `cd "$1" && shift && exec "$@"`, "sh", plan.guestPath}, args...)
	}
	if plan.ws != nil && len(args) == 0 {
		return exitStatus(a.guestShellIn(ctx, c, vm, plan.guestPath, remind))
	}
	return exitStatus(a.guestSession(ctx, c, vm, args, remind))
}

// copyWorkspace streams the workspace into the guest as tar over SSH and
// records it in the daemon.
func (a *app) copyWorkspace(ctx context.Context, c *client.Client, vm string, ws *workspace.Workspace, dest string) error {
	var info api.SSHInfo
	if err := a.sshInfo(ctx, c, vm, &info); err != nil {
		return err
	}
	signer, _, err := guestssh.EnsureKey(info.KeyPath)
	if err != nil {
		return err
	}
	sc, err := guestssh.Dial(ctx, net.JoinHostPort(info.Host, "22"), guestssh.DialOptions{User: info.User, Signer: signer, KnownHosts: guestssh.OpenKnownHosts(info.KnownHosts), Timeout: 10 * time.Second})
	if err != nil {
		return err
	}
	defer sc.Close()
	if err := a.sendWorkspace(ctx, sc, vm, ws, dest); err != nil {
		return err
	}
	head := ws.Head
	if ws.FromCommit != "" {
		head = ws.FromCommit
	}
	return c.Call(ctx, api.MethodVMWorkspaceRecord, api.VMWorkspaceParams{Name: vm, Workspace: api.Workspace{
		HostPath: ws.Root, GuestPath: dest, HeadCommit: head, Mode: ws.Mode}}, nil)
}

// guestRunner runs one command in a guest: over SSH (guestssh.Client) or
// through a cluster's exec (kubeclient.Runner).
type guestRunner interface {
	Run(ctx context.Context, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error)
}

// sendWorkspace streams the workspace into the guest as tar through r. A
// guest with git checks the unchanged files out of the shallow clone
// itself, so only the changed ones travel. Large copies show progress on a
// terminal.
func (a *app) sendWorkspace(ctx context.Context, r guestRunner, vm string, ws *workspace.Workspace, dest string) error {
	hasGit, _ := r.Run(ctx, []string{"sh", "-c", "command -v git >/dev/null"}, nil, io.Discard, io.Discard)
	if (ws.FromCommit != "" || ws.Opts.Branch != "") && hasGit != 0 {
		return fmt.Errorf("--branch and --from need git in the guest, and VM %s's image has none (try --image debian-bookworm)", vm)
	}
	wo := workspace.WriteOptions{GuestCheckout: hasGit == 0}
	prog := a.copyProgress()
	wo.Progress = prog.update
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(ws.WriteTar(ctx, pw, wo)) }()
	var stderr strings.Builder
	script := `rm -rf "$1" && mkdir -p "$1" && tar -x -o -C "$1" || exit 1` + "\n" + ws.GuestScript(wo)
	code, err := r.Run(ctx, []string{"sh", "-c", script, "sh", dest, ws.Opts.Branch}, pr, io.Discard, &stderr)
	pr.Close()
	prog.done()
	if err != nil {
		return fmt.Errorf("copy workspace: %w", err)
	}
	if code != 0 {
		return fmt.Errorf("copy workspace into %s:%s failed (exit %d): %s", vm, dest, code, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// progressLine shows "copying workspace: X of Y (P%)" on a terminal, at
// most twice a second, for copies above a few MiB.
type progressLine struct {
	a     *app
	on    bool
	last  time.Time
	shown bool
}

func (a *app) copyProgress() *progressLine {
	return &progressLine{a: a, on: output.IsTerminal(a.stderr)}
}

func (p *progressLine) update(written, total int64) {
	if !p.on || total < 8<<20 || time.Since(p.last) < 500*time.Millisecond {
		return
	}
	p.last = time.Now()
	p.shown = true
	fmt.Fprintf(p.a.stderr, "\r\x1b[K%s", output.Dim(p.a.stderr, fmt.Sprintf("copying workspace: %s of %s (%d%%)", config.FormatSize(written), config.FormatSize(total), written*100/total)))
}

func (p *progressLine) done() {
	if p.shown {
		fmt.Fprint(p.a.stderr, "\r\x1b[K")
	}
}

// guestShellIn opens an interactive shell in dir of a running VM.
func (a *app) guestShellIn(ctx context.Context, c *client.Client, name, dir string, remind bool) (int, error) {
	var info api.SSHInfo
	if err := a.sshInfo(ctx, c, name, &info); err != nil {
		return 0, err
	}
	code, err := a.interactiveIn(ctx, info, net.JoinHostPort(info.Host, "22"), dir)
	if remind && err == nil {
		fmt.Fprintf(a.stderr, "%s\n", output.Dim(a.stderr, fmt.Sprintf("VM %s is still running; 'banger vm stop %s' stops it, 'banger vm delete %s' removes it.", name, name, name)))
	}
	return code, err
}

// inWorkspace runs argv in the VM's last prepared workspace (home if none),
// warning when the host repository's HEAD moved since it was prepared.
func (a *app) inWorkspace(ctx context.Context, info api.SSHInfo, argv []string) []string {
	w := info.Workspace
	if w == nil {
		return argv
	}
	if head, err := sysexec.Output(ctx, "git", "-C", w.HostPath, "rev-parse", "HEAD"); err == nil {
		if h := strings.TrimSpace(string(head)); h != w.HeadCommit {
			fmt.Fprintf(a.stderr, "banger: warning: HEAD of %s moved since the workspace was prepared (%.12s → %.12s); 'banger vm workspace prepare %s %s' re-syncs it\n",
				w.HostPath, w.HeadCommit, h, info.Name, w.HostPath)
		}
	}
	return append([]string{"sh", "-c", `cd "$1" && shift && exec "$@"`, "sh", w.GuestPath}, argv...)
}

func (a *app) vmSSHCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "ssh NAME [-- CMD [ARG...]]",
		Short:             "Open an SSH shell in a running VM (or run a command)",
		Example:           "  banger vm ssh dev\n  banger vm ssh dev -- uptime",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := a.daemon(cmd.Context())
			if err != nil {
				return err
			}
			return exitStatus(a.guestSession(cmd.Context(), c, args[0], args[1:], true))
		},
	}
}

// guestSession runs argv in the guest (or an interactive shell when argv is
// empty) with banger's key and pinned host keys, and returns the exit code.
func (a *app) guestSession(ctx context.Context, c *client.Client, name string, argv []string, remind bool) (int, error) {
	var info api.SSHInfo
	if err := a.sshInfo(ctx, c, name, &info); err != nil {
		return 0, err
	}
	if info.State != api.StateRunning {
		return 0, fmt.Errorf("VM %s is %s; start it with 'banger vm start %s'", name, info.State, name)
	}
	addr := net.JoinHostPort(info.Host, "22")
	if len(argv) == 0 {
		code, err := a.interactive(ctx, info, addr)
		if remind && err == nil {
			fmt.Fprintf(a.stderr, "%s\n", output.Dim(a.stderr, fmt.Sprintf("VM %s is still running; 'banger vm stop %s' stops it, 'banger vm delete %s' removes it.", name, name, name)))
		}
		return code, err
	}
	var stdin io.Reader = a.stdin
	if f, ok := a.stdin.(*os.File); ok && output.IsTerminal(f) {
		stdin = nil // don't hold the terminal for a non-interactive command
	}
	return runIn(ctx, info, argv, stdin, a.stdout, a.stderr)
}

// exitStatus turns a guest command's result into banger's: its exit code
// passes through unchanged.
func exitStatus(code int, err error) error {
	if err != nil {
		return err
	}
	if code != 0 {
		return &ExitCodeError{Code: code}
	}
	return nil
}

// guestSessionTo runs argv in a running VM with its output captured.
func (a *app) guestSessionTo(ctx context.Context, c *client.Client, name string, argv []string, stdout, stderr io.Writer) (int, error) {
	var info api.SSHInfo
	if err := a.sshInfo(ctx, c, name, &info); err != nil {
		return 0, err
	}
	if info.State != api.StateRunning {
		return 0, fmt.Errorf("VM %s is %s; start it with 'banger vm start %s'", name, info.State, name)
	}
	return runIn(ctx, info, argv, nil, stdout, stderr)
}

func runIn(ctx context.Context, info api.SSHInfo, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	signer, _, err := guestssh.EnsureKey(info.KeyPath)
	if err != nil {
		return 0, err
	}
	sc, err := guestssh.Dial(ctx, net.JoinHostPort(info.Host, "22"), guestssh.DialOptions{User: info.User, Signer: signer, KnownHosts: guestssh.OpenKnownHosts(info.KnownHosts), Timeout: 10 * time.Second})
	if err != nil {
		return 0, err
	}
	defer sc.Close()
	return sc.Run(ctx, withGuestEnv(argv), stdin, stdout, stderr)
}

// withGuestEnv runs argv with the image's declared environment, when it has
// one (a no-op in banger's own images).
func withGuestEnv(argv []string) []string { return guestssh.WithImageEnv(argv) }

// interactive hands over to the system ssh client when there is one, with
// banger's key and known_hosts; otherwise it opens a shell itself.
func (a *app) interactive(ctx context.Context, info api.SSHInfo, addr string) (int, error) {
	return a.interactiveIn(ctx, info, addr, "")
}

// interactiveIn is interactive starting in directory dir ("" = home).
func (a *app) interactiveIn(ctx context.Context, info api.SSHInfo, addr, dir string) (int, error) {
	if ssh, err := sysexec.LookPath("ssh"); err == nil {
		args := guestssh.SystemSSHArgs(addr, info.KeyPath, info.KnownHosts)
		if dir != "" {
			args = append([]string{args[0], "-t"}, args[1:]...)
			args = append(args, guestssh.ShellInCommand(dir))
		}
		// Not bounded by ctx: the session ends when ssh does (Ctrl-C is
		// the guest's).
		_, err := sysexec.Run(context.Background(), sysexec.Cmd{Path: ssh, Argv0: args[0], Args: args[1:],
			Stdin: a.stdin, Stdout: a.stdout, Stderr: a.stderr})
		var se *sysexec.Error
		if errors.As(err, &se) && se.Started && se.Code != 0 {
			return se.Code, nil
		}
		return 0, err
	}
	signer, _, err := guestssh.EnsureKey(info.KeyPath)
	if err != nil {
		return 0, err
	}
	sc, err := guestssh.Dial(ctx, addr, guestssh.DialOptions{User: info.User, Signer: signer, KnownHosts: guestssh.OpenKnownHosts(info.KnownHosts)})
	if err != nil {
		return 0, err
	}
	defer sc.Close()
	in, _ := a.stdin.(*os.File)
	if in == nil {
		in = os.Stdin
	}
	return sc.ShellIn(ctx, dir, in, a.stdout, a.stderr)
}

// sshInfo asks how to reach a VM's guest, waking it first when it is
// parked (from its snapshot) or paused: 'vm exec', 'vm ssh' and 'vm
// workspace prepare' of a parked VM just work.
func (a *app) sshInfo(ctx context.Context, c *client.Client, name string, info *api.SSHInfo) error {
	if err := c.Call(ctx, api.MethodVMSSHInfo, api.VMRef{Name: name}, info); err != nil {
		return err
	}
	if info.State != api.StateParked && info.State != api.StatePaused {
		return nil
	}
	var v api.VM
	if err := a.withProgress(ctx, c, "waking "+name, func(ctx context.Context) error {
		return c.Call(ctx, api.MethodVMResume, api.VMRef{Name: name}, &v)
	}); err != nil {
		return err
	}
	return c.Call(ctx, api.MethodVMSSHInfo, api.VMRef{Name: name}, info)
}
