package cli

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/spf13/cobra"
)

func (a *app) kernelCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kernel",
		Short: "Import, pull and inspect kernels",
		Long: `Kernels boot images. The built-in one is Debian's cloud kernel, made by
'kernel import' (also done on demand): an uncompressed vmlinux for
Firecracker, plus the bzImage and an initramfs loading the virtio modules.
Others come from the kernel catalog (catalog.kernel_url) with 'kernel pull'.`,
		Example: `  banger kernel list
  banger kernel list --available`,
	}
	cmd.AddCommand(a.kernelListCmd(), a.kernelShowCmd(), a.kernelRmCmd(), a.kernelPullCmd(), a.kernelImportCmd())
	return cmd
}

// kernelListCmd is 'kernel list'.
func (a *app) kernelListCmd() *cobra.Command {
	var asJSON, available bool
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List registered kernels (or, with --available, the kernel catalog)",
		Example: "  banger kernel list\n  banger kernel list --available --json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if available {
				var cat api.Catalog
				if err := a.call(cmd.Context(), api.MethodKernelCatalog, nil, &cat); err != nil {
					return err
				}
				return a.printCatalog(cat, asJSON, false)
			}
			var ks []api.Kernel
			if err := a.call(cmd.Context(), api.MethodKernelList, nil, &ks); err != nil {
				return err
			}
			if asJSON {
				return output.JSON(a.stdout, ks)
			}
			rows := [][]string{}
			for _, k := range ks {
				rows = append(rows, []string{k.Name, orDash(k.Version), mib(k.SizeBytes), orDash(strings.Join(k.UsedBy, ",")), age(k.CreatedAt)})
			}
			return output.Table(a.stdout, []string{"NAME", "VERSION", "SIZE", "USED BY", "AGE"}, rows)
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	list.Flags().BoolVar(&available, "available", false, "list the kernel catalog, with a pulled/available state")
	return list
}

// kernelShowCmd is 'kernel show'.
func (a *app) kernelShowCmd() *cobra.Command {
	var showJSON bool
	show := &cobra.Command{
		Use:               "show NAME",
		Short:             "Show one kernel",
		Example:           "  banger kernel show 6.1.0-28-cloud-amd64 --json",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeNames(api.MethodKernelList),
		RunE: func(cmd *cobra.Command, args []string) error {
			var k api.Kernel
			if err := a.call(cmd.Context(), api.MethodKernelShow, api.KernelRef{Name: args[0]}, &k); err != nil {
				return err
			}
			if showJSON {
				return output.JSON(a.stdout, k)
			}
			return output.KV(a.stdout, [][2]string{{"name", k.Name}, {"version", orDash(k.Version)}, {"vmlinux", k.Vmlinux},
				{"vmlinuz", orDash(k.Vmlinuz)}, {"initrd", orDash(k.Initrd)}, {"modules", orDash(k.Modules)}, {"source", orDash(k.Source)},
				{"managed", fmt.Sprint(k.Managed)}, {"used by", orDash(strings.Join(k.UsedBy, ", "))}, {"created", k.CreatedAt}})
		},
	}
	show.Flags().BoolVar(&showJSON, "json", false, "print JSON")
	return show
}

// kernelRmCmd is 'kernel rm'.
func (a *app) kernelRmCmd() *cobra.Command {
	rm := &cobra.Command{
		Use:               "rm NAME",
		Aliases:           []string{"delete"},
		Short:             "Delete a kernel no image boots",
		Example:           "  banger kernel rm generic-6.1",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeNames(api.MethodKernelList),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.call(cmd.Context(), api.MethodKernelDelete, api.KernelRef{Name: args[0]}, nil); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s deleted\n", args[0])
			return nil
		},
	}
	return rm
}

// kernelPullCmd is 'kernel pull'.
func (a *app) kernelPullCmd() *cobra.Command {
	var force, pullJSON bool
	pull := &cobra.Command{
		Use:     "pull NAME",
		Short:   "Pull a kernel from the kernel catalog",
		Example: "  banger kernel pull generic-6.1\n  banger kernel pull generic-6.1 --force",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var k api.Kernel
			if err := a.longCall(cmd.Context(), "pulling kernel "+args[0], api.MethodKernelPull, api.KernelRef{Name: args[0], Force: force}, &k); err != nil {
				return err
			}
			return a.printKernel(k, "pulled", pullJSON)
		},
	}
	pull.Flags().BoolVar(&force, "force", false, "pull again even if a kernel of that name is registered")
	pull.Flags().BoolVar(&pullJSON, "json", false, "print the kernel as JSON")
	return pull
}

// kernelImportCmd is 'kernel import'.
func (a *app) kernelImportCmd() *cobra.Command {
	var ip api.KernelImportParams
	var importJSON bool
	imp := &cobra.Command{
		Use:   "import [--deb FILE] [--name NAME]",
		Short: "Import Debian's cloud kernel package as a kernel",
		Long: `Import linux-image-cloud-amd64 from the Debian archive (or a local
linux-image-*.deb with --deb): the vmlinux Firecracker boots, the bzImage, an
initramfs that loads the virtio modules, and the modules.`,
		Example: "  banger kernel import\n  banger kernel import --deb ./linux-image-6.1.0-28-cloud-amd64_6.1.119-1_amd64.deb --name cloud-6.1",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if ip.Deb != "" {
				var err error
				if ip.Deb, err = absPath(ip.Deb); err != nil {
					return err
				}
			}
			var k api.Kernel
			if err := a.longCall(cmd.Context(), "importing kernel", api.MethodKernelImport, ip, &k); err != nil {
				return err
			}
			return a.printKernel(k, "imported", importJSON)
		},
	}
	imp.Flags().StringVar(&ip.Deb, "deb", "", "local linux-image-*.deb `file` instead of the archive's")
	imp.Flags().StringVar(&ip.Name, "name", "", "kernel name (default: the kernel version)")
	imp.Flags().BoolVar(&importJSON, "json", false, "print the kernel as JSON")
	return imp
}

// printKernel reports a kernel a command made, or prints it as JSON.
func (a *app) printKernel(k api.Kernel, verb string, asJSON bool) error {
	if asJSON {
		return output.JSON(a.stdout, k)
	}
	fmt.Fprintf(a.stdout, "kernel %s %s (%s)\n", k.Name, verb, orDash(k.Version))
	return nil
}

// absPath makes a path flag absolute against the CLI's working directory
// (the daemon has its own).
func absPath(p string) (string, error) {
	a, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("%s: %w", p, err)
	}
	return a, nil
}
