package cli

import (
	"github.com/banger-dev/banger/internal/buildinfo"
	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/spf13/cobra"
)

func (a *app) versionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "version",
		Short:   "Print build information",
		Example: "  banger version\n  banger version --json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			b := buildinfo.Get()
			if asJSON {
				return output.JSON(a.stdout, b)
			}
			return output.KV(a.stdout, [][2]string{
				{"version", b.Version}, {"commit", b.Commit}, {"built_at", b.BuiltAt}, {"go", b.GoVersion},
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
