package cli

import (
	"fmt"
	"strings"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/spf13/cobra"
)

func (a *app) imageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "List, inspect and delete images",
		Long: `Images are read-only root filesystems VMs are created from. The built-in
images (tiny, debian-bookworm) are built from Debian packages the first time
a VM needs them, and registered; 'image list' shows the registered ones.`,
	}
	var asJSON bool
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List registered images",
		Example: "  banger image list\n  banger image list --json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var ims []api.Image
			if err := a.call(cmd.Context(), api.MethodImageList, nil, &ims); err != nil {
				return err
			}
			if asJSON {
				return output.JSON(a.stdout, ims)
			}
			rows := [][]string{}
			for _, im := range ims {
				rows = append(rows, []string{im.Name, im.Kernel, fmt.Sprintf("%dM", im.SizeBytes>>20), orDash(strings.Join(im.UsedBy, ",")), age(im.CreatedAt)})
			}
			return output.Table(a.stdout, []string{"NAME", "KERNEL", "SIZE", "USED BY", "AGE"}, rows)
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	var showJSON bool
	show := &cobra.Command{
		Use:     "show NAME",
		Short:   "Show one image",
		Example: "  banger image show tiny --json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var im api.Image
			if err := a.call(cmd.Context(), api.MethodImageShow, api.ImageRef{Name: args[0]}, &im); err != nil {
				return err
			}
			if showJSON {
				return output.JSON(a.stdout, im)
			}
			return output.KV(a.stdout, [][2]string{{"name", im.Name}, {"id", im.ID}, {"rootfs", im.Rootfs},
				{"kernel", im.Kernel}, {"size", fmt.Sprintf("%d MiB", im.SizeBytes>>20)}, {"used by", orDash(strings.Join(im.UsedBy, ", "))}, {"created", im.CreatedAt}})
		},
	}
	show.Flags().BoolVar(&showJSON, "json", false, "print JSON")
	del := &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete an image no VM uses (a built-in one is rebuilt on next use)",
		Example: "  banger image delete debian-bookworm",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.call(cmd.Context(), api.MethodImageDelete, api.ImageRef{Name: args[0]}, nil); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s deleted\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(list, show, del)
	return cmd
}
