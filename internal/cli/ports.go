package cli

import (
	"fmt"
	"strconv"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/spf13/cobra"
)

func (a *app) vmPortsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ports [VM...]",
		Short: "List the listening sockets of running VMs (from banger's guest agent)",
		Long: `Ask the guest agent in each VM (all running VMs when none is named, all at
once) which sockets listen, and show them with their <name>.vm endpoint and,
for TCP ports other than ssh, an http link. Sockets bound to the guest's
loopback have no endpoint: only the guest reaches them.`,
		Example:           "  banger vm ports\n  banger vm ports web api --json",
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var res []api.VMPorts
			if err := a.call(cmd.Context(), api.MethodVMPorts, api.VMPortsParams{Names: args}, &res); err != nil {
				return err
			}
			if asJSON {
				return output.JSON(a.stdout, res)
			}
			rows := [][]string{}
			failed := 0
			for _, v := range res {
				if v.Error != "" {
					failed++
					a.printError(fmt.Errorf("VM %s: %s", v.Name, v.Error))
					continue
				}
				for _, l := range v.Listeners {
					proc := l.Process
					if l.PID != 0 {
						proc += "[" + strconv.Itoa(l.PID) + "]"
					}
					rows = append(rows, []string{v.Name, l.Proto, l.Address + ":" + strconv.Itoa(l.Port), orDash(proc), orDash(l.Endpoint), orDash(l.URL)})
				}
			}
			if err := output.Table(a.stdout, []string{"VM", "PROTO", "LISTEN", "PROCESS", "ENDPOINT", "URL"}, rows); err != nil {
				return err
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
