package cli

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/banger-dev/banger/internal/client"
	"github.com/banger-dev/banger/internal/guestssh"
	"github.com/banger-dev/banger/internal/workspace"
)

// Per-repository toolchains: a repository that pins its tools for mise
// (.mise.toml, mise.toml or .tool-versions at its root) gets them installed
// in the guest before `vm run` runs its command, and the command runs under
// `mise exec --`, so the pinned versions are the ones on PATH. Installing
// tools downloads them, so it needs the guest's uplink (--nat); without it
// `vm run` refuses before anything is created. docs/devbox.md.

// miseFiles are the files that make `vm run PATH` bootstrap toolchains.
var miseFiles = []string{".mise.toml", "mise.toml", ".tool-versions"}

// bootstrapLog is where the bootstrap's output is kept in the guest.
const bootstrapLog = "/root/.banger/bootstrap.log"

// maxBootstrapOutput bounds what a failed bootstrap's message quotes from
// the guest.
const maxBootstrapOutput = 16 << 10

// toolchainFile names the first mise file the workspace will copy ("" =
// none).
func toolchainFile(ws *workspace.Workspace) string {
	copied := map[string]bool{}
	for _, f := range ws.Files {
		copied[f] = true
	}
	for _, f := range miseFiles {
		if copied[f] {
			return f
		}
	}
	return ""
}

// checkBootstrap refuses, before anything exists, a bootstrap the guest
// could not do.
func checkBootstrap(ws *workspace.Workspace, nat, noBootstrap bool) (bool, error) {
	f := toolchainFile(ws)
	if f == "" || noBootstrap {
		return false, nil
	}
	if !nat {
		return false, usageError{fmt.Errorf("%s has %s: installing its toolchains with mise needs the guest's network; add --nat, or --no-bootstrap to run without them", ws.Root, f)}
	}
	return true, nil
}

// bootstrapScript trusts the repository's mise configuration and installs
// its tools, with the output in bootstrapLog; $1 is the repository's path
// in the guest.
const bootstrapScript = `cd "$1" || exit 1
if ! command -v mise >/dev/null 2>&1; then
	echo "this image has no mise: use the default image (debian-bookworm), or --no-bootstrap" >&2
	exit 127
fi
mkdir -p "$(dirname ` + bootstrapLog + `)"
export MISE_YES=1
{ mise trust && mise install; } >` + bootstrapLog + ` 2>&1
`

// bootstrapToolchains runs bootstrapScript in the VM; on failure the error
// names the log and shows its last lines.
func (a *app) bootstrapToolchains(ctx context.Context, c *client.Client, vm, guestPath string) error {
	if output.IsTerminal(a.stderr) {
		fmt.Fprintln(a.stderr, output.Dim(a.stderr, "bootstrapping toolchains (mise install) ..."))
	}
	// What the guest writes back is capped (it is printed in the error).
	stderr := &guestssh.HeadBuffer{Max: maxBootstrapOutput}
	code, err := a.guestSessionTo(ctx, c, vm, []string{"sh", "-c", bootstrapScript, "sh", guestPath}, io.Discard, stderr)
	if err != nil {
		return fmt.Errorf("toolchain bootstrap: %w", err)
	}
	if code == 0 {
		return nil
	}
	if msg := strings.TrimSpace(stderr.String()); msg != "" {
		return fmt.Errorf("toolchain bootstrap in VM %s failed: %s", vm, msg)
	}
	tail := &guestssh.HeadBuffer{Max: maxBootstrapOutput}
	a.guestSessionTo(ctx, c, vm, []string{"tail", "-n", "15", bootstrapLog}, tail, io.Discard)
	return fmt.Errorf("toolchain bootstrap in VM %s failed (mise exit %d); its log is %s:%s ('banger vm exec %s -- cat %s'); last lines:\n%s",
		vm, code, vm, bootstrapLog, vm, bootstrapLog, strings.TrimRight(tail.String(), "\n"))
}

// underMise wraps argv so it runs with the repository's tools on PATH.
func underMise(argv []string) []string {
	return append([]string{"mise", "exec", "--"}, argv...)
}
