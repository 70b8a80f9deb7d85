// Package cli implements the banger command line: one file per noun, cobra
// commands in `banger <noun> <verb>` form. It reaches the daemon only through
// internal/client.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/banger-dev/banger/internal/buildinfo"
	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/banger-dev/banger/internal/client"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/spf13/cobra"
)

// Exit codes that mean something. A guest command's own exit code is passed
// through unchanged by `vm run -- cmd` and `vm exec`.
const (
	ExitOK          = 0
	ExitFailure     = 1
	ExitUsage       = 2 // bad flags, bad input, bad config
	ExitUnavailable = 3 // the daemon could not be reached or started
)

// ExitCodeError makes banger exit with Code without printing anything more.
// Only this concrete type is unwrapped by Main.
type ExitCodeError struct{ Code int }

func (e *ExitCodeError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// app carries what every command shares.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	system         bool
	// kubeContext is --context (or $BANGER_CONTEXT): a [contexts.NAME]
	// cluster of banger hosts instead of the local daemon.
	kubeContext string
}

// Main runs the CLI and returns the process exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	var ec *ExitCodeError
	if errors.As(err, &ec) {
		return ec.Code
	}
	a.printError(err)
	return exitCodeFor(err)
}

func (a *app) printError(err error) {
	msg := err.Error()
	if id := errdefs.OpIDOf(err); id != "" {
		msg += " " + output.Dim(a.stderr, "("+id+")")
	}
	fmt.Fprintf(a.stderr, "banger: %s\n", msg)
}

// printWarnings prints what a call warned of, one line each.
func (a *app) printWarnings(ws []string) {
	for _, w := range ws {
		fmt.Fprintf(a.stderr, "banger: warning: %s\n", w)
	}
}

type usageError struct{ error }

func exitCodeFor(err error) int {
	var ue usageError
	var ce *config.Error
	switch {
	case errors.As(err, &ue), errors.As(err, &ce), errors.Is(err, errdefs.ErrBadRequest):
		return ExitUsage
	case errors.Is(err, errdefs.ErrUnavailable):
		return ExitUnavailable
	}
	return ExitFailure
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "banger",
		Short: "One-command development sandboxes on Firecracker microVMs",
		Long: `banger runs throwaway or long-lived Linux microVMs for development.

The banger CLI talks to bangerd, an owner daemon that keeps VM state and
reaches root only through a narrow helper. In user mode the CLI starts the
daemon on demand; after 'banger system install' systemd runs it.`,
		Example: `  banger daemon status            # start the daemon if needed and show it
  banger --context ci vm run --rm ./repo -- make test   # on a cluster of banger hosts
  banger version --json            # build information
  banger config show               # effective configuration and where each value came from`,
		Version:       buildinfo.Get().Line("banger"),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.PersistentFlags().BoolVar(&a.system, "system", false, "use the system install's paths (/etc/banger, /var/lib/banger, /run/banger)")
	root.PersistentFlags().StringVar(&a.kubeContext, "context", "", "run on the cluster of banger hosts `NAME` ([contexts.NAME] in config; $BANGER_CONTEXT) instead of the local daemon: vm run, exec, list and delete")
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error { return a.checkContext(cmd) }
	_ = root.RegisterFlagCompletionFunc("context", a.completeContexts)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%v (see '%s --help')", err, c.CommandPath())}
	})
	root.AddCommand(a.versionCmd(), a.daemonCmd(), a.configCmd(), a.vmCmd(), a.psCmd(), a.imageCmd(), a.kernelCmd(), a.doctorCmd(), a.systemCmd(), a.updateCmd(), a.mcpCmd(), a.sshConfigCmd(), a.internalCmd())
	refuseUnknownSubcommands(root)
	return root
}

// refuseUnknownSubcommands makes every command group (a command with
// subcommands and nothing to run itself) print its help when called bare and
// refuse an unknown subcommand as a usage error (exit 2) that suggests the
// nearest ones and names the valid ones. Left alone, cobra prints the help
// and exits 0 for "banger vm frobnicate", and exits 1 for "banger
// frobnicate".
func refuseUnknownSubcommands(c *cobra.Command) {
	if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
		c.Args = cobra.ArbitraryArgs
		c.RunE = func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			return unknownSubcommand(cmd, args[0])
		}
	}
	for _, sub := range c.Commands() {
		refuseUnknownSubcommands(sub)
	}
}

func unknownSubcommand(cmd *cobra.Command, name string) error {
	var valid []string
	for _, sub := range cmd.Commands() {
		if sub.IsAvailableCommand() {
			valid = append(valid, sub.Name())
		}
	}
	msg := fmt.Sprintf("unknown command %q for %q", name, cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's own default
	}
	if s := cmd.SuggestionsFor(name); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(s, " or "))
	}
	return usageError{fmt.Errorf("%s; valid commands: %s (see '%s --help')", msg, strings.Join(valid, ", "), cmd.CommandPath())}
}

// layout resolves the paths for this invocation.
func (a *app) layout() (paths.Layout, error) { return paths.Resolve(a.system) }

// loadConfig validates the config before anything is started.
func (a *app) loadConfig(l paths.Layout) (*config.Loaded, error) {
	return config.Load(l.ConfigFile())
}

// config is this invocation's layout and its loaded config.
func (a *app) config() (*config.Loaded, paths.Layout, error) {
	l, err := a.layout()
	if err != nil {
		return nil, l, err
	}
	cfg, err := a.loadConfig(l)
	return cfg, l, err
}

// daemon returns a client for a daemon running this build, starting it in
// user mode when needed. The config is validated first: a bad config starts
// nothing.
func (a *app) daemon(ctx context.Context) (*client.Client, paths.Layout, error) {
	l, err := a.layout()
	if err != nil {
		return nil, l, err
	}
	if _, err := a.loadConfig(l); err != nil {
		return nil, l, err
	}
	c, err := client.Ensure(ctx, l, func(msg string) {
		fmt.Fprintf(a.stderr, "banger: %s\n", msg)
	})
	if err != nil {
		var e *errdefs.Error
		if !errors.As(err, &e) {
			err = errdefs.Wrap(errdefs.Unavailable, err)
		}
		return nil, l, err
	}
	return c, l, nil
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("%s takes no arguments (got %q)", cmd.CommandPath(), args[0])}
	}
	return nil
}
