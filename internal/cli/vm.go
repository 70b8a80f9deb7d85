package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/banger-dev/banger/internal/config"
	"github.com/spf13/cobra"
)

func (a *app) vmCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vm",
		Short: "Create, run and manage microVMs",
		Long: `Create, run and manage microVMs.

A VM is long-lived: it keeps its root and /root disks across stop and start
until you delete it. 'banger vm run' is the one-command path: create, boot,
then an SSH shell or a command.`,
		Example: `  banger vm run                          # a fresh VM and an SSH shell
  banger vm run --rm -- uname -a         # run one command in a throwaway VM
  banger vm create --name dev --vcpu 2   # a VM to keep
  banger vm exec dev -- cat /etc/os-release
  banger vm list`,
	}
	cmd.AddCommand(a.vmCreateCmd(), a.vmRefCmd("start", "Start a stopped VM", api.MethodVMStart, "started"),
		a.vmRefCmd("stop", "Stop a VM cleanly (sync, power off; killed after a timeout)", api.MethodVMStop, "stopped"),
		a.vmRefCmd("restart", "Stop then start a VM (a fresh boot)", api.MethodVMRestart, "restarted"),
		a.vmRefCmd("pause", "Pause a running VM's vCPUs (its memory stays resident)", api.MethodVMPause, "paused"),
		a.vmResumeCmd(),
		a.vmRefCmd("park", "Snapshot a running VM to disk and end its VMM (no memory held; 'vm resume', 'vm exec' or 'vm ssh' wake it)", api.MethodVMPark, "parked"),
		a.vmForkCmd(),
		a.vmKillCmd(), a.vmDeleteCmd(), a.vmPruneCmd(), a.vmSetCmd(), a.vmListCmd(), a.vmShowCmd(), a.vmLogsCmd(),
		a.vmRunCmd(), a.vmSSHCmd(), a.vmExecCmd(), a.vmCpCmd(), a.vmWorkspaceCmd(), a.vmPortsCmd(), a.vmStatsCmd())
	return cmd
}

// psCmd is the top-level alias of 'vm list'.
func (a *app) psCmd() *cobra.Command {
	c := a.vmListCmd()
	c.Use = "ps"
	c.Short = "List VMs (alias of 'banger vm list')"
	c.Example = "  banger ps\n  banger ps --json"
	return c
}

type createFlags struct {
	name, image, disk string
	vcpu, memory      int
	nat, cold         bool
	labels            labelsValue
}

func (f *createFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.name, "name", "", "VM name, a DNS label (default: generated, like brisk-otter)")
	cmd.Flags().StringVar(&f.image, "image", "", "image to boot (default: default_image in config)")
	cmd.Flags().IntVar(&f.vcpu, "vcpu", 0, "vCPUs (default: vm_defaults.vcpu)")
	cmd.Flags().IntVar(&f.memory, "memory", 0, "memory in MiB (default: vm_defaults.memory_mib)")
	cmd.Flags().StringVar(&f.disk, "disk-size", "", "size of the /root work disk, like 2G (default: vm_defaults.disk_size)")
	cmd.Flags().BoolVar(&f.nat, "nat", false, "give the guest outbound network access through NAT")
	cmd.Flags().BoolVar(&f.cold, "cold", false, "boot, even when a warm-start template of this shape exists (config: start)")
	cmd.Flags().Var(&f.labels, "label", "tag the VM with `KEY=VALUE` (repeatable; vm list --filter label=KEY=VALUE finds it)")
}

func (f *createFlags) params(cmd *cobra.Command) api.VMCreateParams {
	p := api.VMCreateParams{Name: f.name, Image: f.image, NAT: f.nat, Cold: f.cold, Labels: f.labels.set}
	if cmd.Flags().Changed("vcpu") {
		v := f.vcpu
		p.VCPU = &v
	}
	if cmd.Flags().Changed("memory") {
		v := f.memory
		p.MemoryMiB = &v
	}
	if cmd.Flags().Changed("disk-size") {
		v := f.disk
		p.DiskSize = &v
	}
	return p
}

func (a *app) vmCreateCmd() *cobra.Command {
	var f createFlags
	var noStart, asJSON bool
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a VM (and start it, unless --no-start)",
		Example: `  banger vm create --name dev
  banger vm create --name big --vcpu 2 --memory 2048 --disk-size 4G --nat
  banger vm create --name later --no-start
  banger vm create --name api --label team=web --label env=dev`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := a.daemon(cmd.Context())
			if err != nil {
				return err
			}
			p := f.params(cmd)
			p.NoStart = noStart
			var v api.VM
			err = a.withProgress(cmd.Context(), c, "creating VM", func(ctx context.Context) error {
				return c.Call(ctx, api.MethodVMCreate, p, &v)
			})
			if err != nil {
				return err
			}
			a.printWarnings(v.Warnings)
			if asJSON {
				return output.JSON(a.stdout, v)
			}
			fmt.Fprintf(a.stdout, "%s %s (%s)\n", v.Name, v.State, v.IP)
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&noStart, "no-start", false, "create the VM's disks but do not boot it")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VM as JSON")
	return cmd
}

// call reaches the daemon (starting it in user mode if needed) and makes
// one call.
func (a *app) call(ctx context.Context, method string, params, out any) error {
	c, _, err := a.daemon(ctx)
	if err != nil {
		return err
	}
	return c.Call(ctx, method, params, out)
}

func exactlyOneVM(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usageError{fmt.Errorf("%s needs exactly one VM name (got %d arguments)", cmd.CommandPath(), len(args))}
	}
	return nil
}

func (a *app) completeVMs(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	return a.completeNames(api.MethodVMList)(cmd, args, toComplete)
}

func (a *app) vmRefCmd(verb, short, method, done string) *cobra.Command {
	return &cobra.Command{
		Use:               verb + " NAME",
		Short:             short,
		Example:           fmt.Sprintf("  banger vm %s dev", verb),
		Args:              exactlyOneVM,
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.vmCall(cmd.Context(), verb, args[0], method, api.VMRef{Name: args[0]}, done)
		},
	}
}

// vmCall runs a lifecycle method on one VM with progress, then prints
// "NAME DONE" (and a parked VM's snapshot size).
func (a *app) vmCall(ctx context.Context, verb, name, method string, params any, done string) error {
	c, _, err := a.daemon(ctx)
	if err != nil {
		return err
	}
	var v api.VM
	err = a.withProgress(ctx, c, verb+" "+name, func(ctx context.Context) error {
		return c.Call(ctx, method, params, &v)
	})
	if err != nil {
		return err
	}
	if v.State == api.StateParked && v.Runtime.SnapshotBytes > 0 {
		fmt.Fprintf(a.stdout, "%s %s (snapshot %s)\n", v.Name, done, config.FormatSize(v.Runtime.SnapshotBytes))
		return nil
	}
	fmt.Fprintf(a.stdout, "%s %s\n", v.Name, done)
	return nil
}

func (a *app) vmResumeCmd() *cobra.Command {
	var cold bool
	cmd := &cobra.Command{
		Use:   "resume NAME",
		Short: "Resume a paused VM, or wake a parked one from its snapshot",
		Long: `Resume a paused VM, or wake a parked one: its snapshot is loaded into a new
VMM, the guest gets fresh entropy and the host's clock, and it carries on
where it was parked (docs/snapshots.md). --cold boots a parked VM's kept
disks instead, discarding the snapshot and so the guest's memory: for a
snapshot that cannot be loaded (after an incompatible update).`,
		Example:           "  banger vm resume dev\n  banger vm resume --cold dev",
		Args:              exactlyOneVM,
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.vmCall(cmd.Context(), "resume", args[0], api.MethodVMResume, api.VMResumeParams{Name: args[0], Cold: cold}, "running")
		},
	}
	cmd.Flags().BoolVar(&cold, "cold", false, "boot a parked VM's disks, discarding its snapshot (its memory)")
	return cmd
}

func (a *app) vmForkCmd() *cobra.Command {
	var (
		names  []string
		count  int
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "fork SRC",
		Short: "Make running copies of a VM from its memory and disks as they are now",
		Long: `Fork a running or parked VM: each fork starts from SRC's memory and disks at
this moment (its processes, /dev/shm, workspace and page cache) and then takes
an identity of its own before it is reported ready: MAC, IP address and
hostname (its name), a fresh /etc/machine-id, new SSH host keys (pinned by
banger), fresh kernel entropy and the host's clock. SRC pauses for the
snapshot and carries on; a parked SRC forks from its snapshot and stays
parked. Under banger-vmm the forks' disks are qcow2 overlays of SRC's, frozen
at the fork, so a fork costs the same whatever the image's size, and SRC
cannot be deleted while a fork depends on it (docs/snapshots.md).`,
		Example: `  banger vm fork dev                     # one fork, named dev-fork-1
  banger vm fork dev --count 3
  banger vm fork dev --name try-a --name try-b
  banger vm fork dev --json`,
		Args:              exactlyOneVM,
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := a.daemon(cmd.Context())
			if err != nil {
				return err
			}
			var r api.VMForkResult
			err = a.withProgress(cmd.Context(), c, "fork "+args[0], func(ctx context.Context) error {
				return c.Call(ctx, api.MethodVMFork, api.VMForkParams{Name: args[0], Names: names, Count: count}, &r)
			})
			if asJSON && len(r.Forks) > 0 {
				if jerr := output.JSON(a.stdout, r); jerr != nil {
					return jerr
				}
				return err
			}
			for _, f := range r.Forks {
				fmt.Fprintf(a.stdout, "%s %s (%s, forked from %s)\n", f.Name, f.State, f.IP, args[0])
			}
			return err
		},
	}
	cmd.Flags().StringSliceVar(&names, "name", nil, "name of a fork (repeat for several; default: SRC-fork-N)")
	cmd.Flags().IntVar(&count, "count", 0, fmt.Sprintf("how many forks (1-%d; default 1, or one per --name)", api.MaxForks))
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the source and the forks as JSON")
	return cmd
}

func (a *app) vmKillCmd() *cobra.Command {
	var sig string
	cmd := &cobra.Command{
		Use:               "kill NAME",
		Short:             "Force-kill a VM's VMM (use when 'vm stop' hangs)",
		Example:           "  banger vm kill dev\n  banger vm kill dev --signal TERM",
		Args:              exactlyOneVM,
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var v api.VM
			if err := a.call(cmd.Context(), api.MethodVMKill, api.VMKillParams{Name: args[0], Signal: strings.ToUpper(sig)}, &v); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s killed\n", v.Name)
			return nil
		},
	}
	cmd.Flags().StringVar(&sig, "signal", "KILL", "signal to send the VMM: KILL, TERM, INT or QUIT")
	return cmd
}

func (a *app) vmDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "delete NAME...",
		Aliases:           []string{"rm"},
		Short:             "Stop VMs and remove their disks (irreversible)",
		Example:           "  banger vm delete dev\n  banger vm rm a b c",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.kubeContext != "" {
				return a.vmDeleteKube(cmd.Context(), args)
			}
			c, _, err := a.daemon(cmd.Context())
			if err != nil {
				return err
			}
			for _, n := range args {
				err := a.withProgress(cmd.Context(), c, "deleting "+n, func(ctx context.Context) error {
					return c.Call(ctx, api.MethodVMDelete, api.VMRef{Name: n}, nil)
				})
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "%s deleted\n", n)
			}
			return nil
		},
	}
}

func (a *app) vmPruneCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "prune",
		Short:   "Delete every VM that is not running (running VMs are never touched)",
		Example: "  banger vm prune\n  banger vm prune -f",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var vms []api.VM
			if err := a.call(cmd.Context(), api.MethodVMList, nil, &vms); err != nil {
				return err
			}
			var rows [][]string
			for _, v := range vms {
				if v.State != api.StateRunning && v.State != api.StateStarting {
					rows = append(rows, []string{v.Name, v.State, v.IP})
				}
			}
			if len(rows) == 0 {
				fmt.Fprintln(a.stdout, "nothing to prune")
				return nil
			}
			if !force {
				output.Table(a.stdout, []string{"NAME", "STATE", "IP"}, rows)
				f, ok := a.stdin.(*os.File)
				if !ok || !output.IsTerminal(f) {
					return usageError{fmt.Errorf("refusing to delete %d VM(s) without confirmation; use -f", len(rows))}
				}
				fmt.Fprintf(a.stdout, "Delete these %d VM(s) and their disks? [y/N] ", len(rows))
				line, _ := bufio.NewReader(a.stdin).ReadString('\n')
				if ans := strings.ToLower(strings.TrimSpace(line)); ans != "y" && ans != "yes" {
					fmt.Fprintln(a.stdout, "nothing deleted")
					return nil
				}
			}
			var res api.VMPruneResult
			if err := a.call(cmd.Context(), api.MethodVMPrune, nil, &res); err != nil {
				return err
			}
			for _, n := range res.Deleted {
				fmt.Fprintf(a.stdout, "%s deleted\n", n)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "do not ask for confirmation")
	return cmd
}

func (a *app) vmSetCmd() *cobra.Command {
	var vcpu, mem int
	labels := labelsValue{removable: true}
	cmd := &cobra.Command{
		Use:   "set NAME",
		Short: "Change a stopped VM's vCPUs or memory, or any VM's labels",
		Example: `  banger vm set dev --vcpu 2 --memory 2048
  banger vm set dev --label env=staging --label owner-   # set env, remove owner`,
		Args:              exactlyOneVM,
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := a.daemon(cmd.Context())
			if err != nil {
				return err
			}
			p := api.VMSetParams{Name: args[0]}
			if cmd.Flags().Changed("vcpu") {
				p.VCPU = &vcpu
			}
			if cmd.Flags().Changed("memory") {
				p.MemoryMiB = &mem
			}
			p.Labels, p.RemoveLabels = labels.set, labels.remove
			var v api.VM
			if err := c.Call(cmd.Context(), api.MethodVMSet, p, &v); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s: %d vcpu, %d MiB, labels %s\n", v.Name, v.VCPU, v.MemoryMiB, orDash(labelString(v.Labels)))
			return nil
		},
	}
	cmd.Flags().IntVar(&vcpu, "vcpu", 0, "vCPUs (1-32)")
	cmd.Flags().IntVar(&mem, "memory", 0, "memory in MiB (at least 128)")
	cmd.Flags().Var(&labels, "label", "set label `KEY=VALUE`, or remove KEY with KEY- (repeatable)")
	return cmd
}

func age(ts string) string {
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return d.String()
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func (a *app) vmListCmd() *cobra.Command {
	var asJSON bool
	var filters []string
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List VMs",
		Example: `  banger vm list
  banger vm list --json | jq -r '.[].name'
  banger vm list --filter label=team=web --filter state=running`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.kubeContext != "" {
				if len(filters) > 0 {
					return usageError{errors.New("vm list --context: --filter is the local daemon's; use kubectl get pods -l for a cluster")}
				}
				return a.vmListKube(cmd.Context(), asJSON)
			}
			if a.kubeContext != "" {
				if len(filters) > 0 {
					return usageError{errors.New("vm list --context: --filter is the local daemon's; use kubectl get pods -l for a cluster")}
				}
				return a.vmListKube(cmd.Context(), asJSON)
			}
			var vms []api.VM
			if err := a.call(cmd.Context(), api.MethodVMList, api.VMListParams{Filters: filters}, &vms); err != nil {
				return err
			}
			if asJSON {
				return output.JSON(a.stdout, vms)
			}
			head := []string{"NAME", "STATE", "IP", "VCPU", "MEM", "IMAGE", "VMM", "AGE"}
			labelled := slices.ContainsFunc(vms, func(v api.VM) bool { return len(v.Labels) > 0 })
			if labelled {
				head = append(head, "LABELS")
			}
			rows := make([][]string, 0, len(vms))
			for _, v := range vms {
				row := []string{v.Name, v.State, v.IP, fmt.Sprint(v.VCPU), fmt.Sprintf("%dM", v.MemoryMiB), v.Image, orDash(v.Runtime.VMMKind), age(v.CreatedAt)}
				if labelled {
					row = append(row, orDash(labelString(v.Labels)))
				}
				rows = append(rows, row)
			}
			return output.Table(a.stdout, head, rows)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringArrayVar(&filters, "filter", nil, "only VMs matching `FIELD=VALUE`: label=KEY=VALUE, label=KEY, state=STATE, image=NAME (repeatable: all must match)")
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (a *app) vmShowCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:               "show NAME",
		Short:             "Show one VM, including which VMM runs it",
		Example:           "  banger vm show dev\n  banger vm show dev --json",
		Args:              exactlyOneVM,
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var v api.VM
			if err := a.call(cmd.Context(), api.MethodVMShow, api.VMRef{Name: args[0]}, &v); err != nil {
				return err
			}
			if asJSON {
				return output.JSON(a.stdout, v)
			}
			pairs := [][2]string{
				{"name", v.Name}, {"id", v.ID}, {"state", v.State}, {"ip", v.IP}, {"dns name", v.DNSName}, {"image", v.Image},
				{"vcpu", fmt.Sprint(v.VCPU)}, {"memory", fmt.Sprintf("%d MiB", v.MemoryMiB)},
				{"work disk", fmt.Sprintf("%d MiB", v.DiskBytes>>20)}, {"nat", fmt.Sprint(v.NAT)},
				{"vmm", orDash(v.Runtime.VMMKind)}, {"vmm binary", orDash(v.Runtime.VMM)}, {"vmm pid", orDash(pidStr(v.Runtime.PID))},
				{"tap", v.Runtime.Tap}, {"root disk", orDash(v.Runtime.CloneMethod)}, {"created", v.CreatedAt},
				{"labels", orDash(labelString(v.Labels))},
			}
			switch {
			case v.Runtime.Start == "warm":
				pairs = append(pairs, [2]string{"start", "warm, from template " + v.Runtime.StartedFrom})
			case v.Runtime.Start != "":
				pairs = append(pairs, [2]string{"start", v.Runtime.Start})
			}
			if w := v.Runtime.Workspace; w != nil {
				pairs = append(pairs, [2]string{"workspace", fmt.Sprintf("%s → %s (HEAD %s, %s)", w.HostPath, w.GuestPath, w.HeadCommit, w.Mode)})
			}
			if v.Runtime.ForkOf != "" {
				pairs = append(pairs, [2]string{"forked from", v.Runtime.ForkOf})
			}
			if len(v.Runtime.DiskParents) > 0 {
				pairs = append(pairs, [2]string{"disks backed by", strings.Join(v.Runtime.DiskParents, ", ")})
			}
			if v.State == api.StateParked {
				pairs = append(pairs, [2]string{"snapshot", fmt.Sprintf("%s, parked %s ('banger vm resume %s' wakes it)", config.FormatSize(v.Runtime.SnapshotBytes), v.Runtime.ParkedAt, v.Name)})
			}
			if v.Runtime.StopReason != "" {
				pairs = append(pairs, [2]string{"stop reason", v.Runtime.StopReason})
			}
			if v.Runtime.LastError != "" {
				pairs = append(pairs, [2]string{"last error", v.Runtime.LastError})
			}
			return output.KV(a.stdout, pairs)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func pidStr(p int) string {
	if p == 0 {
		return ""
	}
	return fmt.Sprint(p)
}

func (a *app) vmLogsCmd() *cobra.Command {
	var job string
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs NAME [--exec ID [-f]]",
		Short: "Print a VM's serial console log, or a background job's output",
		Example: `  banger vm logs dev | tail
  banger vm logs dev --exec 3f2a9c01b7d4 -f   # follow a 'vm exec -d' job; exits with its status`,
		Args:              exactlyOneVM,
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if job != "" {
				return a.jobLogs(cmd.Context(), args[0], job, follow)
			}
			if follow {
				return usageError{errors.New("vm logs: -f follows a background job: give --exec ID")}
			}
			var l api.VMLogs
			if err := a.call(cmd.Context(), api.MethodVMLogs, api.VMRef{Name: args[0]}, &l); err != nil {
				return err
			}
			if l.Truncated {
				fmt.Fprintf(a.stderr, "(showing the end of %s)\n", l.Path)
			}
			fmt.Fprint(a.stdout, l.Text)
			return nil
		},
	}
	cmd.Flags().StringVar(&job, "exec", "", "print the output of background job `ID` ('vm exec -d') instead")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "with --exec: follow the output until the job ends, then exit with its status")
	return cmd
}
