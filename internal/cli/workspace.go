package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/guestssh"
	"github.com/banger-dev/banger/internal/workspace"
	"github.com/spf13/cobra"
)

func (a *app) vmWorkspaceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "workspace",
		Short: "Copy a repository into a VM, and bring the guest's changes back as a patch",
		Example: `  banger vm workspace prepare dev ./repo
  banger vm workspace --help   # every subcommand`,
	}
	var wf wsFlags
	prepare := &cobra.Command{
		Use:   "prepare VM PATH",
		Short: "Copy (or re-sync) a repository into a running VM; 'vm exec' then runs there",
		Example: `  banger vm workspace prepare dev .
  banger vm workspace prepare dev ~/src/app --include-untracked
  banger vm workspace prepare dev . --branch try-fix --from v1.2.0
  banger vm workspace prepare dev . --full-copy          # all history, submodules`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ws, dest, done, err := a.planWorkspace(cmd.Context(), args[1], wf)
			if err != nil || done {
				return err
			}
			c, _, err := a.daemon(cmd.Context())
			if err != nil {
				return err
			}
			if err := a.copyWorkspace(cmd.Context(), c, args[0], ws, dest); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s prepared in %s:%s (HEAD %.12s)\n", ws.Root, args[0], dest, ws.Head)
			return nil
		},
	}
	wf.add(prepare, "")

	var base, outFile, maxSize string
	export := &cobra.Command{
		Use:   "export VM",
		Short: "Write the guest's changes as a patch that 'git apply' takes on the host",
		Long: `Write the guest's changes to its workspace as a patch (to stdout, or -o FILE).

Without --base-commit the patch is the guest's uncommitted changes against its
HEAD; with --base-commit (normally the HEAD the workspace was prepared at,
shown by 'vm show') commits made inside the guest are included too. The
guest's index, working tree and refs are not touched: a throwaway index
inside .git is used.

The guest decides what it sends: the patch is spooled to a temporary file
(beside -o FILE, else in $TMPDIR), never held in memory, and refused past
--max-size; nothing is written then.`,
		Example: `  banger vm workspace export dev > changes.patch && git apply changes.patch
  banger vm workspace export dev --base-commit "$(git rev-parse HEAD)" -o guest.patch`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if base != "" && !regexp.MustCompile(`^[0-9a-f]{7,40}$`).MatchString(base) {
				return usageError{fmt.Errorf("--base-commit %q is not a commit id", base)}
			}
			limit, err := config.ParseSize(maxSize)
			if err != nil || limit <= 0 {
				return usageError{fmt.Errorf("--max-size %q is not a size such as 256M or 2G", maxSize)}
			}
			c, _, err := a.daemon(cmd.Context())
			if err != nil {
				return err
			}
			var info api.SSHInfo
			if err := a.sshInfo(cmd.Context(), c, args[0], &info); err != nil {
				return err
			}
			if info.Workspace == nil {
				return fmt.Errorf("VM %s has no workspace; prepare one with 'banger vm workspace prepare %s PATH'", args[0], args[0])
			}
			script := `cd "$1" || exit 1
gd=$(git rev-parse --absolute-git-dir) || exit 1
idx="$gd/banger-export-index.$$"
trap 'rm -f "$idx"' EXIT
cp "$gd/index" "$idx" 2>/dev/null || true
GIT_INDEX_FILE="$idx" git add -A && GIT_INDEX_FILE="$idx" git diff --cached --binary "$2"`
			ref := base
			if ref == "" {
				ref = "HEAD"
			}
			argv := []string{"sh", "-c", script, "sh", info.Workspace.GuestPath, ref}
			run := func(ctx context.Context, stdout, stderr io.Writer) (int, error) {
				return a.guestSessionTo(ctx, c, args[0], argv, stdout, stderr)
			}
			return exportPatch(cmd.Context(), args[0], limit, outFile, a.stdout, a.stderr, run)
		},
	}
	export.Flags().StringVar(&base, "base-commit", "", "diff from this commit, so commits made in the guest are included")
	export.Flags().StringVarP(&outFile, "output", "o", "", "write the patch to this file instead of stdout")
	export.Flags().StringVar(&maxSize, "max-size", defaultMaxPatch, "refuse a patch larger than this (e.g. 64M, 2G)")
	cmd.AddCommand(prepare, export)
	return cmd
}

// wsFlags are the workspace flags of vm run and workspace prepare.
type wsFlags struct {
	untracked, fullCopy, dryRun bool
	guestPath, branch, from     string
}

func (w *wsFlags) add(cmd *cobra.Command, prefix string) {
	cmd.Flags().BoolVar(&w.untracked, "include-untracked", false, prefix+"also copy untracked files git does not ignore")
	cmd.Flags().BoolVar(&w.fullCopy, "full-copy", false, prefix+"copy the repository's own .git (all history) and its submodules")
	cmd.Flags().StringVar(&w.guestPath, "guest-path", "", prefix+"where the repository goes in the guest (default /root/<repo name>)")
	cmd.Flags().StringVar(&w.branch, "branch", "", prefix+"create this guest-only branch after the copy")
	cmd.Flags().StringVar(&w.from, "from", "", prefix+"with --branch: start the branch at this commit (its files, not the working tree)")
	cmd.Flags().BoolVar(&w.dryRun, "dry-run", false, prefix+"list the files and the mode, create nothing")
}

// planWorkspace inspects path and resolves the guest path. With dryRun it
// prints the plan and reports done; otherwise it prints the notice about
// skipped untracked files.
func (a *app) planWorkspace(ctx context.Context, path string, f wsFlags) (ws *workspace.Workspace, dest string, done bool, err error) {
	ws, err = workspace.Inspect(ctx, path, workspace.Options{IncludeUntracked: f.untracked, FullCopy: f.fullCopy, Branch: f.branch, From: f.from})
	if err != nil {
		return nil, "", false, usageError{err}
	}
	guestPath := f.guestPath
	if guestPath == "" {
		guestPath = "/root/" + ws.Name
	} else if !strings.HasPrefix(guestPath, "/") {
		return nil, "", false, usageError{fmt.Errorf("--guest-path %q must be an absolute path in the guest", guestPath)}
	}
	if f.dryRun {
		fmt.Fprintf(a.stdout, "mode: %s; %d file(s) from %s → %s (HEAD %.12s)\n", ws.Mode, len(ws.Files), ws.Root, guestPath, ws.Head)
		if f.branch != "" {
			fmt.Fprintf(a.stdout, "guest-only branch: %s\n", f.branch)
		}
		for _, f := range ws.Files {
			fmt.Fprintln(a.stdout, f)
		}
		return ws, guestPath, true, nil
	}
	if ws.SkippedUntracked > 0 {
		fmt.Fprintf(a.stderr, "banger: %d untracked file(s) not copied (--include-untracked copies those git does not ignore)\n", ws.SkippedUntracked)
	}
	return ws, guestPath, false, nil
}

// defaultMaxPatch is the default --max-size of 'vm workspace export'.
const defaultMaxPatch = "256M"

// maxExportStderr bounds the guest's stderr kept for an export's error.
const maxExportStderr = 4 << 10

// exportPatch runs run, which writes the guest's patch to its stdout, and
// hands the patch on (to outFile, else to stdout) only when the export
// succeeded and the patch is at most limit bytes. The patch is spooled to an
// unlinked temporary file, never held in memory; past limit the session is
// cancelled and nothing is written. notes gets the "wrote" line.
func exportPatch(ctx context.Context, vm string, limit int64, outFile string, stdout, notes io.Writer, run func(ctx context.Context, stdout, stderr io.Writer) (int, error)) error {
	spoolDir := ""
	if outFile != "" {
		spoolDir = filepath.Dir(outFile) // the patch's own disk, not a tmpfs
	}
	spool, err := os.CreateTemp(spoolDir, ".banger-export-*.patch")
	if err != nil && spoolDir != "" {
		spool, err = os.CreateTemp("", ".banger-export-*.patch")
	}
	if err != nil {
		return fmt.Errorf("export: temporary file: %w", err)
	}
	os.Remove(spool.Name()) // nothing is left behind, however this ends
	defer spool.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := &limitWriter{w: spool, left: limit, over: cancel}
	errBuf := &guestssh.HeadBuffer{Max: maxExportStderr}
	code, err := run(ctx, out, errBuf)
	if out.exceeded {
		return fmt.Errorf("the patch from %s is larger than %s; nothing written (raise --max-size to take it)", vm, config.FormatSize(limit))
	}
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("export from %s failed (exit %d): %s", vm, code, strings.TrimSpace(errBuf.String()))
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if outFile == "" {
		_, err = io.Copy(stdout, spool)
		return err
	}
	f, err := os.OpenFile(outFile, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, spool)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(notes, "banger: wrote %d bytes to %s\n", n, outFile)
	return nil
}

// errPatchTooLarge is what limitWriter returns past its limit.
var errPatchTooLarge = errors.New("patch larger than --max-size")

// limitWriter passes at most left bytes to w; the write that would pass it
// fails, sets exceeded and calls over.
type limitWriter struct {
	w        io.Writer
	left     int64
	over     func()
	exceeded bool
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.exceeded {
		return 0, errPatchTooLarge
	}
	if int64(len(p)) > l.left {
		l.exceeded = true
		l.over()
		return 0, errPatchTooLarge
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	return n, err
}
