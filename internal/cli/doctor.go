package cli

import (
	"fmt"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/spf13/cobra"
)

func (a *app) doctorCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check what banger needs on this host, and say how to fix what is missing",
		Long: `Check the VMM (and QEMU, KVM), the root helper, host tools, the default
image, the guest agent, .vm DNS, guest DNS, reflink support under the state
dir and the release key. Each check is ok, warn or fail; a failure comes with
a fix. Exit status 0 when nothing fails, 1 otherwise. Nothing is changed.`,
		Example: "  banger doctor\n  banger doctor --json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var checks []api.DoctorCheck
			if err := a.call(cmd.Context(), api.MethodDaemonDoctor, nil, &checks); err != nil {
				checks = []api.DoctorCheck{{Name: "daemon", Status: api.DoctorFail, Detail: err.Error(), Fix: "banger daemon status; see the daemon log"}}
			}
			failed := 0
			for _, c := range checks {
				if c.Status == api.DoctorFail {
					failed++
				}
			}
			if asJSON {
				if err := output.JSON(a.stdout, checks); err != nil {
					return err
				}
			} else {
				rows := [][]string{}
				for _, c := range checks {
					detail := c.Detail
					if c.Fix != "" && c.Status != api.DoctorOK {
						detail += " → " + c.Fix
					}
					rows = append(rows, []string{c.Name, c.Status, detail})
				}
				if err := output.Table(a.stdout, []string{"CHECK", "STATUS", "DETAIL"}, rows); err != nil {
					return err
				}
				if failed > 0 {
					fmt.Fprintf(a.stdout, "%d check(s) failed\n", failed)
				}
			}
			if failed > 0 {
				return &ExitCodeError{Code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
