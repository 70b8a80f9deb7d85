package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/banger-dev/banger/internal/client"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/dnsroute"
	"github.com/banger-dev/banger/internal/guestbuild"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/sysexec"
	"github.com/banger-dev/banger/internal/sysinstall"
	"github.com/spf13/cobra"
)

func (a *app) installer() *sysinstall.Installer {
	return &sysinstall.Installer{Layout: sysinstall.DefaultLayout(), Systemd: sysinstall.ExecSystemd{}, Out: a.stdout}
}

func (a *app) systemCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "system",
		Short: "Install and manage banger as a system service (root)",
		Long: `Install and manage banger as two systemd services: bangerd.service (the
daemon, running as the owner user) and bangerd-root.service (the root helper).
Restarting either never stops a running VM.`,
		Example: `  sudo banger system install --owner alice
  banger system status`,
	}
	cmd.AddCommand(a.systemInstallCmd(), a.systemStatusCmd(), a.systemRestartCmd(), a.systemUninstallCmd(), a.systemRenderUnitsCmd())
	return cmd
}

// systemInstallCmd is 'system install'.
func (a *app) systemInstallCmd() *cobra.Command {
	var owner string
	var noImage bool
	install := &cobra.Command{
		Use:   "install --owner USER [--no-image]",
		Short: "Install the binaries and units, start both services and wait until they answer",
		Long: `Install banger as a system service for USER, then build the default image
(default_image, normally debian-bookworm) from the Debian archive: building it
needs root (mmdebstrap), which the owner's daemon does not have. --no-image
skips that; a failed build only warns.`,
		Example: `  sudo banger system install --owner "$USER"
  sudo ./build/bin/banger system install --owner alice   # from a source build
  sudo banger system install --owner alice --no-image  # build the image later`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if owner == "" {
				return usageError{errors.New("--owner USER is required: the user who will run banger")}
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			exe, _ = filepath.EvalSymlinks(exe)
			if err := a.installer().Install(cmd.Context(), owner, filepath.Dir(exe)); err != nil {
				return err
			}
			if !noImage {
				a.buildSystemImage(cmd.Context())
			}
			return nil
		},
	}
	install.Flags().StringVar(&owner, "owner", "", "the user who owns banger's daemon, VMs and state")
	install.Flags().BoolVar(&noImage, "no-image", false, "do not build the default image now")
	return install
}

// systemStatusCmd is 'system status'.
func (a *app) systemStatusCmd() *cobra.Command {
	var asJSON bool
	status := &cobra.Command{
		Use:     "status",
		Short:   "Show the installed services and whether they answer",
		Example: "  banger system status\n  banger system status --json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.printSystemStatus(systemStatus(cmd.Context()), asJSON)
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return status
}

// printSystemStatus prints 'system status' as JSON (failing when installed
// but unhealthy) or as a table of the units.
func (a *app) printSystemStatus(st SystemStatus, asJSON bool) error {
	if asJSON {
		if err := output.JSON(a.stdout, st); err != nil {
			return err
		}
		if st.Installed && !st.Healthy {
			return &ExitCodeError{Code: ExitFailure}
		}
		return nil
	}
	if !st.Installed {
		fmt.Fprintln(a.stdout, "banger is not installed as a system service (see 'banger system install --help')")
		return nil
	}
	rows := [][]string{}
	for _, u := range st.Units {
		rows = append(rows, []string{u.Unit, u.Active, u.MainPID, u.KillMode, yesNo(u.Answers), u.Version})
	}
	fmt.Fprintf(a.stdout, "installed %s for %s (uid %d) at %s\n", st.Meta.Version, st.Meta.OwnerUser, st.Meta.OwnerUID, st.Meta.InstalledAt)
	return output.Table(a.stdout, []string{"UNIT", "ACTIVE", "PID", "KILLMODE", "ANSWERS", "VERSION"}, rows)
}

// systemRenderUnitsCmd is the hidden 'system render-units'.
func (a *app) systemRenderUnitsCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "render-units",
		Short:  "Print the unit files this binary would install, as JSON (used by update)",
		Hidden: true,
		Args:   noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := sysinstall.ReadMeta(paths.InstallMetaPath())
			if err != nil {
				return err
			}
			return output.JSON(a.stdout, sysinstall.RenderUnits(sysinstall.DefaultLayout(), m, sysinstall.UnitOptions{}))
		},
	}
}

// systemRestartCmd is 'system restart'.
func (a *app) systemRestartCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "restart",
		Short:   "Restart the root helper, then the daemon; wait until both answer (VMs keep running)",
		Example: "  sudo banger system restart",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if os.Geteuid() != 0 {
				return errors.New("system restart needs root; run: sudo banger system restart")
			}
			if err := a.installer().Restart(cmd.Context()); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, "restarted bangerd-root.service and bangerd.service")
			return nil
		},
	}
}

// systemUninstallCmd is 'system uninstall'.
func (a *app) systemUninstallCmd() *cobra.Command {
	var purge bool
	uninstall := &cobra.Command{
		Use:   "uninstall [--purge]",
		Short: "Stop and remove the services and binaries (--purge: also state, cache and config)",
		Example: `  sudo banger system uninstall
  sudo banger system uninstall --purge`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if os.Geteuid() != 0 {
				return errors.New("system uninstall needs root; run: sudo banger system uninstall")
			}
			if err := refuseRunningVMs(cmd.Context()); err != nil {
				return err
			}
			// The host's .vm route (systemd-resolved) goes with the install.
			bridge := config.Default().BridgeName
			if c, err := config.Load(paths.SystemLayout().ConfigFile()); err == nil {
				bridge = c.BridgeName
			}
			if err := dnsroute.Revert(cmd.Context(), bridge); err != nil {
				fmt.Fprintf(a.stderr, "banger: warning: %v\n", err)
			}
			if err := a.installer().Uninstall(cmd.Context(), purge); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, "banger uninstalled")
			return nil
		},
	}
	uninstall.Flags().BoolVar(&purge, "purge", false, "also delete /var/lib/banger, /var/cache/banger and /etc/banger")
	return uninstall
}

// refuseRunningVMs fails when the system daemon answers and lists running
// VMs; a daemon that does not answer within 5s refuses nothing.
func refuseRunningVMs(ctx context.Context) error {
	var vms []api.VM
	c := client.New(paths.SystemLayout().SocketPath())
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Call(ctx, api.MethodVMList, nil, &vms); err == nil {
		var running []string
		for _, v := range vms {
			if v.State == api.StateRunning {
				running = append(running, v.Name)
			}
		}
		if len(running) > 0 {
			return fmt.Errorf("VMs are running (%s); stop or delete them first", strings.Join(running, ", "))
		}
	}
	return nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// UnitStatus is one service's state.
type UnitStatus struct {
	Unit     string `json:"unit"`
	Active   string `json:"active"`
	MainPID  string `json:"main_pid"`
	KillMode string `json:"kill_mode"`
	Answers  bool   `json:"answers"`
	Version  string `json:"version,omitempty"`
	Socket   string `json:"socket"`
}

// SystemStatus is 'system status --json'.
type SystemStatus struct {
	Installed bool            `json:"installed"`
	Meta      sysinstall.Meta `json:"meta"`
	Units     []UnitStatus    `json:"units"`
	Healthy   bool            `json:"healthy"`
}

func systemStatus(ctx context.Context) SystemStatus {
	var st SystemStatus
	m, err := sysinstall.ReadMeta(paths.InstallMetaPath())
	if err != nil {
		return st
	}
	st.Installed, st.Meta, st.Healthy = true, m, true
	l := paths.SystemLayout()
	for _, u := range []struct{ unit, sock string }{{sysinstall.HelperUnit, l.HelperSocketPath()}, {sysinstall.DaemonUnit, l.SocketPath()}} {
		us := UnitStatus{Unit: u.unit, Socket: u.sock}
		out, _ := sysexec.Output(ctx, "systemctl", "show", "--property=ActiveState,MainPID,KillMode", u.unit)
		for _, line := range strings.Split(string(out), "\n") {
			k, v, _ := strings.Cut(line, "=")
			switch k {
			case "ActiveState":
				us.Active = v
			case "MainPID":
				us.MainPID = v
			case "KillMode":
				us.KillMode = v
			}
		}
		var p api.PingResult
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if err := client.New(u.sock).Call(pctx, api.MethodPing, nil, &p); err == nil {
			us.Answers, us.Version = true, p.Build.Version
		}
		cancel()
		if us.Active != "active" || !us.Answers {
			st.Healthy = false
		}
		st.Units = append(st.Units, us)
	}
	return st
}

// buildSystemImage builds the system's default image as root (mmdebstrap
// needs it; the owner's daemon and the narrow root helper cannot) and hands
// the cache to the owner. A failure only warns: VMs can still use tiny.
func (a *app) buildSystemImage(ctx context.Context) {
	l := paths.SystemLayout()
	name := config.Default().DefaultImage
	if cfg, err := a.loadConfig(l); err == nil {
		name = cfg.DefaultImage
	}
	build := guestbuild.Builtins[name]
	if build == nil {
		return // not a built-in image: pulled or registered by the owner
	}
	fmt.Fprintf(a.stdout, "building the default image %s (Debian archive and npm registry; a few minutes, once) ...\n", name)
	art, err := buildGuestAsRoot(ctx, l, build, a.stderr)
	if err != nil {
		a.printError(fmt.Errorf("warning: the default image %s was not built (%v); build it later with 'sudo banger internal build-guest --image %s', or use --image tiny", name, err, name))
		return
	}
	fmt.Fprintf(a.stdout, "default image %s ready (%s)\n", name, art.Key)
}
