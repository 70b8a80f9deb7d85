package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/banger-dev/banger/internal/config"
	"github.com/spf13/cobra"
)

func (a *app) vmStatsCmd() *cobra.Command {
	var asJSON, watch bool
	var every time.Duration
	cmd := &cobra.Command{
		Use:   "stats [NAME...]",
		Short: "Show what running VMs cost: CPU, memory, disk and network",
		Long: `Show, for each running VM (or those named): the CPU its VMM uses on the host
(% of one CPU, over half a second), the VMM's resident memory on the host,
the memory the guest uses (MemTotal - MemAvailable), the guest's root and
work disks (used / size, as df reports them), and the bytes the guest has
received and sent (counted on its tap). The guest's figures come from its
banger-agent; a VM whose agent does not answer shows only the host's.`,
		Example: `  banger vm stats
  banger vm stats dev --json
  banger vm stats --watch`,
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if watch && asJSON {
				return usageError{fmt.Errorf("vm stats: --watch and --json go separately")}
			}
			c, _, err := a.daemon(cmd.Context())
			if err != nil {
				return err
			}
			get := func(ctx context.Context) ([]api.VMStats, error) {
				var st []api.VMStats
				return st, c.Call(ctx, api.MethodVMStats, api.VMStatsParams{Names: args}, &st)
			}
			if !watch {
				st, err := get(cmd.Context())
				if err != nil {
					return err
				}
				if asJSON {
					return output.JSON(a.stdout, st)
				}
				return a.printStats(st)
			}
			term := output.IsTerminal(a.stdout)
			for {
				st, err := get(cmd.Context())
				if err != nil {
					return err
				}
				if term {
					fmt.Fprint(a.stdout, "\x1b[H\x1b[2J")
				}
				if err := a.printStats(st); err != nil {
					return err
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(every):
				}
			}
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "refresh until interrupted")
	cmd.Flags().DurationVar(&every, "interval", 2*time.Second, "with --watch: time between refreshes")
	return cmd
}

func (a *app) printStats(st []api.VMStats) error {
	rows := [][]string{}
	size := func(n int64) string { return config.FormatSize(n) }
	for _, s := range st {
		mem := "-"
		if s.GuestMemTotalBytes > 0 {
			mem = size(s.GuestMemUsedBytes) + " / " + size(s.GuestMemTotalBytes)
		}
		disks := map[string]string{"/": "-", "/root": "-"}
		for _, d := range s.Disks {
			disks[d.Path] = size(d.UsedBytes) + " / " + size(d.TotalBytes)
		}
		note := ""
		if s.Error != "" {
			note = printable(s.Error)
		}
		rows = append(rows, []string{s.Name, fmt.Sprintf("%.1f%%", s.CPUPercent), size(s.VMMRSSBytes), mem, disks["/"], disks["/root"],
			size(s.NetRxBytes) + " / " + size(s.NetTxBytes), strings.TrimSpace(note)})
	}
	return output.Table(a.stdout, []string{"NAME", "CPU", "VMM RSS", "GUEST MEM", "ROOT DISK", "WORK DISK", "NET RX / TX", "NOTE"}, rows)
}
