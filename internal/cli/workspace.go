package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/workspace"
	"github.com/spf13/cobra"
)

func (a *app) vmWorkspaceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "workspace",
		Short: "Copy a repository into a VM, and bring the guest's changes back as a patch",
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

	var base, outFile string
	export := &cobra.Command{
		Use:   "export VM",
		Short: "Write the guest's changes as a patch that 'git apply' takes on the host",
		Long: `Write the guest's changes to its workspace as a patch (to stdout, or -o FILE).

Without --base-commit the patch is the guest's uncommitted changes against its
HEAD; with --base-commit (normally the HEAD the workspace was prepared at,
shown by 'vm show') commits made inside the guest are included too. The
guest's index, working tree and refs are not touched: a throwaway index
inside .git is used.`,
		Example: `  banger vm workspace export dev > changes.patch && git apply changes.patch
  banger vm workspace export dev --base-commit "$(git rev-parse HEAD)" -o guest.patch`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if base != "" && !regexp.MustCompile(`^[0-9a-f]{7,40}$`).MatchString(base) {
				return usageError{fmt.Errorf("--base-commit %q is not a commit id", base)}
			}
			c, _, err := a.daemon(cmd.Context())
			if err != nil {
				return err
			}
			var info api.SSHInfo
			if err := c.Call(cmd.Context(), api.MethodVMSSHInfo, api.VMRef{Name: args[0]}, &info); err != nil {
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
			var patch, stderr bytes.Buffer
			argv := []string{"sh", "-c", script, "sh", info.Workspace.GuestPath, ref}
			code, err := a.guestSessionTo(cmd.Context(), c, args[0], argv, &patch, &stderr)
			if err != nil {
				return err
			}
			if code != 0 {
				return fmt.Errorf("export from %s failed (exit %d): %s", args[0], code, strings.TrimSpace(stderr.String()))
			}
			if outFile != "" {
				if err := os.WriteFile(outFile, patch.Bytes(), 0o644); err != nil {
					return err
				}
				fmt.Fprintf(a.stderr, "banger: wrote %d bytes to %s\n", patch.Len(), outFile)
				return nil
			}
			_, err = a.stdout.Write(patch.Bytes())
			return err
		},
	}
	export.Flags().StringVar(&base, "base-commit", "", "diff from this commit, so commits made in the guest are included")
	export.Flags().StringVarP(&outFile, "output", "o", "", "write the patch to this file instead of stdout")
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
