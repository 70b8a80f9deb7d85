package cli

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/banger-dev/banger/internal/client"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/spf13/cobra"
)

func (a *app) daemonCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Inspect and control the banger daemon (bangerd)",
		Example: `  banger daemon status        # start it if needed and show it
  banger daemon stop`,
	}
	cmd.AddCommand(a.daemonSocketCmd(), a.daemonStatusCmd(), a.daemonStopCmd())
	return cmd
}

func (a *app) daemonSocketCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "socket",
		Short:   "Print the daemon's socket path",
		Example: "  banger daemon socket",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := a.layout()
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, l.SocketPath())
			return nil
		},
	}
}

func (a *app) daemonStatusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the running daemon (starting it in user mode if needed)",
		Example: `  banger daemon status
  banger daemon status --json | jq .version`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := a.daemon(cmd.Context())
			if err != nil {
				return err
			}
			var st api.DaemonStatus
			if err := c.Call(cmd.Context(), api.MethodDaemonStatus, nil, &st); err != nil {
				return err
			}
			if asJSON {
				return output.JSON(a.stdout, st)
			}
			return output.KV(a.stdout, [][2]string{
				{"running", "yes"},
				{"version", st.Version},
				{"commit", st.Build.Commit},
				{"pid", fmt.Sprint(st.PID)},
				{"uptime", (time.Duration(st.UptimeSeconds) * time.Second).String()},
				{"socket", st.Socket},
				{"mode", st.Mode},
				{"in-flight", fmt.Sprint(st.InFlight)},
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (a *app) daemonStopCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "stop",
		Short: "Stop the daemon (running VMs keep running)",
		Long: `Stop the daemon. Running VMs are not touched: their VMMs run detached and
the next daemon re-adopts them.`,
		Example: "  banger daemon stop",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := a.layout()
			if err != nil {
				return err
			}
			c := client.New(l.SocketPath())
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			ping, err := c.Ping(ctx)
			if errors.Is(err, errdefs.ErrUnavailable) {
				fmt.Fprintln(a.stdout, "daemon not running")
				return nil
			}
			if err != nil {
				return err
			}
			if err := c.Call(ctx, api.MethodDaemonShutdown, nil, nil); err != nil {
				return err
			}
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) {
				if syscall.Kill(ping.PID, 0) != nil {
					fmt.Fprintf(a.stdout, "daemon stopped (pid %d)\n", ping.PID)
					return nil
				}
				time.Sleep(50 * time.Millisecond)
			}
			return fmt.Errorf("daemon (pid %d) is still running after 30s", ping.PID)
		},
	}
}
