package cli

import (
	"fmt"

	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/spf13/cobra"
)

func (a *app) configCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Inspect banger's configuration",
		Example: `  banger config show          # effective settings and where each came from
  banger config show --json`,
	}
	var asJSON bool
	show := &cobra.Command{
		Use:   "show",
		Short: "Print the effective configuration and where each value came from",
		Example: `  banger config show
  banger config show --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, _, err := a.config()
			if err != nil {
				return err
			}
			if asJSON {
				return output.JSON(a.stdout, cfg)
			}
			fmt.Fprintf(a.stdout, "# config file: %s\n", cfg.File)
			rows := make([][]string, 0, len(cfg.Entries))
			for _, e := range cfg.Entries {
				rows = append(rows, []string{e.Key, fmt.Sprintf("%v", e.Value), e.Source})
			}
			return output.Table(a.stdout, []string{"KEY", "VALUE", "SOURCE"}, rows)
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(show)
	return cmd
}
