package cli

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/banger-dev/banger/internal/client"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/guestbuild"
	"github.com/spf13/cobra"
)

// completeNames completes the names a list method returns (images, kernels).
func (a *app) completeNames(method string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		l, err := a.layout()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var items []struct {
			Name string `json:"name"`
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := client.New(l.SocketPath()).Call(ctx, method, nil, &items); err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []string
		for _, it := range items {
			out = append(out, it.Name)
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// longCall makes one call with the progress display.
func (a *app) longCall(ctx context.Context, label, method string, params, out any) error {
	c, _, err := a.daemon(ctx)
	if err != nil {
		return err
	}
	return a.withProgress(ctx, c, label, func(ctx context.Context) error {
		return c.Call(ctx, method, params, out)
	})
}

func mib(n int64) string { return fmt.Sprintf("%dM", n>>20) }

// deriveImage builds (or finds) the derived image of a repository, showing
// the build's stages.
func (a *app) deriveImage(ctx context.Context, path string) (api.ImageDeriveResult, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return api.ImageDeriveResult{}, err
	}
	var r api.ImageDeriveResult
	err = a.longCall(ctx, "derived image", api.MethodImageDerive, api.ImageDeriveParams{Path: abs}, &r)
	return r, err
}

func (a *app) printCatalog(cat api.Catalog, asJSON bool, withKernel bool) error {
	if asJSON {
		return output.JSON(a.stdout, cat)
	}
	head := []string{"NAME", "VERSION", "STATE", "SIZE", "DESCRIPTION"}
	if withKernel {
		head = []string{"NAME", "VERSION", "KERNEL", "STATE", "SIZE", "DESCRIPTION"}
	}
	rows := [][]string{}
	for _, e := range cat.Entries {
		r := []string{e.Name, orDash(e.Version), e.State, mib(e.SizeBytes), orDash(e.Description)}
		if withKernel {
			r = []string{e.Name, orDash(e.Version), orDash(e.Kernel), e.State, mib(e.SizeBytes), orDash(e.Description)}
		}
		rows = append(rows, r)
	}
	return output.Table(a.stdout, head, rows)
}

func (a *app) imageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build, pull, register and inspect images",
		Long: `Images are read-only root filesystems VMs are created from. They come from:
  - banger itself: 'image build' makes tiny or debian-bookworm from Debian
    packages (also done on demand when a VM needs one);
  - the image catalog (catalog.image_url): signed index, checked bundles;
  - any OCI registry: 'image pull docker.io/library/alpine:3.20';
  - a local ext4 file: 'image register', then 'image promote'.`,
		Example: `  banger image list --available             # what the catalog offers
  banger image pull docker.io/library/alpine:3.20
  banger image warm debian-bookworm           # a warm-start template now`,
	}
	cmd.AddCommand(a.imageListCmd(), a.imageShowCmd(), a.imageDeleteCmd(), a.imageBuildCmd(), a.imagePullCmd(),
		a.imageRegisterCmd(), a.imagePromoteCmd(), a.imageCacheCmd(), a.imageWarmCmd())
	return cmd
}

// imageListCmd is 'image list'.
func (a *app) imageListCmd() *cobra.Command {
	var asJSON, available bool
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List registered images (or, with --available, the image catalog)",
		Example: "  banger image list\n  banger image list --json\n  banger image list --available",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if available {
				var cat api.Catalog
				if err := a.call(cmd.Context(), api.MethodImageCatalog, nil, &cat); err != nil {
					return err
				}
				return a.printCatalog(cat, asJSON, true)
			}
			var ims []api.Image
			if err := a.call(cmd.Context(), api.MethodImageList, nil, &ims); err != nil {
				return err
			}
			if asJSON {
				return output.JSON(a.stdout, ims)
			}
			rows := [][]string{}
			for _, im := range ims {
				rows = append(rows, []string{im.Name, im.Kernel, mib(im.SizeBytes), orDash(im.Source), orDash(strings.Join(im.UsedBy, ",")), age(im.CreatedAt)})
			}
			return output.Table(a.stdout, []string{"NAME", "KERNEL", "SIZE", "SOURCE", "USED BY", "AGE"}, rows)
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	list.Flags().BoolVar(&available, "available", false, "list the image catalog, with a pulled/available state")
	return list
}

// imageShowCmd is 'image show'.
func (a *app) imageShowCmd() *cobra.Command {
	var showJSON bool
	show := &cobra.Command{
		Use:               "show NAME",
		Short:             "Show one image",
		Example:           "  banger image show tiny --json",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeNames(api.MethodImageList),
		RunE: func(cmd *cobra.Command, args []string) error {
			var im api.Image
			if err := a.call(cmd.Context(), api.MethodImageShow, api.ImageRef{Name: args[0]}, &im); err != nil {
				return err
			}
			if showJSON {
				return output.JSON(a.stdout, im)
			}
			return output.KV(a.stdout, [][2]string{{"name", im.Name}, {"id", im.ID}, {"rootfs", im.Rootfs},
				{"kernel", im.Kernel}, {"size", fmt.Sprintf("%d MiB", im.SizeBytes>>20)}, {"managed", fmt.Sprint(im.Managed)},
				{"source", orDash(im.Source)}, {"used by", orDash(strings.Join(im.UsedBy, ", "))}, {"created", im.CreatedAt}})
		},
	}
	show.Flags().BoolVar(&showJSON, "json", false, "print JSON")
	return show
}

// imageDeleteCmd is 'image delete'.
func (a *app) imageDeleteCmd() *cobra.Command {
	del := &cobra.Command{
		Use:               "delete NAME",
		Aliases:           []string{"rm"},
		Short:             "Delete an image no VM uses (a built-in one is rebuilt on next use)",
		Example:           "  banger image delete debian-bookworm",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeNames(api.MethodImageList),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.call(cmd.Context(), api.MethodImageDelete, api.ImageRef{Name: args[0]}, nil); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s deleted\n", args[0])
			return nil
		},
	}
	return del
}

// imageBuildCmd is 'image build'.
func (a *app) imageBuildCmd() *cobra.Command {
	var buildJSON bool
	var buildFrom string
	build := &cobra.Command{
		Use:   "build [NAME] | build --from FILE",
		Short: "Build a built-in image from Debian packages, or a repository's derived image",
		Long: `Build banger's own images locally from Debian packages: debian-bookworm
(the dev box and default: build tools, Python, Node, Go, Docker, mise),
debian-bookworm-minimal (systemd, OpenSSH, git, curl) or tiny (busybox and
dropbear). Only the Debian archive (and, for mise, the npm registry) is
contacted. The result is cached: a second build is instant unless the recipe
changed.

--from builds a repository's derived image from its .banger/image.toml
(FILE, or the repository holding it): the base image plus extra Debian
packages, files and shell steps, built in a throwaway VM of the base (with
NAT, for apt), never on the host. It is named <repo>-<key> and reused while
the file, the files it copies and the base are unchanged; 'vm run PATH' does
this by itself. See docs/devbox.md.`,
		Example:   "  banger image build\n  banger image build tiny\n  banger image build --from ./repo/.banger/image.toml",
		Args:      cobra.MaximumNArgs(1),
		ValidArgs: guestbuild.BuiltinNames(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if buildFrom != "" {
				if len(args) > 0 {
					return usageError{errors.New("image build takes a NAME or --from FILE, not both")}
				}
				r, err := a.deriveImage(cmd.Context(), buildFrom)
				if err != nil {
					return err
				}
				verb := "built"
				if !r.Built {
					verb = "up to date"
				}
				return a.printImage(r.Image, verb, buildJSON)
			}
			name := guestbuild.DevImage
			if len(args) == 1 {
				name = args[0]
			}
			var im api.Image
			if err := a.longCall(cmd.Context(), "building "+name, api.MethodImageBuild, api.ImageBuildParams{Name: name}, &im); err != nil {
				return err
			}
			return a.printImage(im, "built", buildJSON)
		},
	}
	build.Flags().StringVar(&buildFrom, "from", "", "build the derived image of this .banger/image.toml (or repository)")
	build.Flags().BoolVar(&buildJSON, "json", false, "print the image as JSON")
	return build
}

// imagePullCmd is 'image pull'.
func (a *app) imagePullCmd() *cobra.Command {
	var pp api.ImagePullParams
	var pullJSON bool
	pull := &cobra.Command{
		Use:   "pull NAME|OCI-REF",
		Short: "Pull an image from the image catalog or an OCI registry",
		Long: `A name the image catalog (catalog.image_url) lists is pulled from it: the
index's signature is checked with the release key, the bundle's sha256 while
it streams, and the kernel it names is pulled too. Anything else is an OCI
reference (linux/amd64; credentials from ~/.docker/config.json): the layers
are flattened into an ext4 root filesystem, and banger's guest kit (a static
busybox and an init at /.banger) makes it boot; an image without an SSH
server gets one from its package manager on first boot (needs --nat).`,
		Example: `  banger image pull docker.io/library/debian:bookworm
  banger image pull alpine:3.20 --name alpine
  banger image pull ghcr.io/org/app:v1 --force`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pp.Ref = args[0]
			var im api.Image
			if err := a.longCall(cmd.Context(), "pulling "+args[0], api.MethodImagePull, pp, &im); err != nil {
				return err
			}
			return a.printImage(im, "pulled", pullJSON)
		},
	}
	pull.Flags().StringVar(&pp.Name, "name", "", "image name (default: the catalog name, or derived from the reference)")
	pull.Flags().StringVar(&pp.Kernel, "kernel", "", "registered kernel to boot an OCI image with (default: the built-in kernel)")
	pull.Flags().BoolVar(&pp.Force, "force", false, "replace a registered image of that name")
	pull.Flags().BoolVar(&pullJSON, "json", false, "print the image as JSON")
	return pull
}

// imageRegisterCmd is 'image register'.
func (a *app) imageRegisterCmd() *cobra.Command {
	var rp api.ImageRegisterParams
	register := &cobra.Command{
		Use:   "register --name NAME --rootfs FILE [--kernel NAME | --vmlinux FILE [--initrd FILE]]",
		Short: "Register an existing ext4 root filesystem (used where it is)",
		Long: `Record an ext4 image file as an image without copying it. banger never
deletes it. Because the root helper only reads files under banger's own
directories, run 'banger image promote NAME' before creating VMs from it.`,
		Example: `  banger image register --name mine --rootfs /srv/images/mine.ext4
  banger image register --name mine --rootfs /srv/mine.ext4 --vmlinux /srv/vmlinux --initrd /srv/initrd.img`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if rp.Name == "" || rp.Rootfs == "" {
				return usageError{fmt.Errorf("image register needs --name and --rootfs")}
			}
			if rp.Kernel != "" && rp.Vmlinux != "" {
				return usageError{fmt.Errorf("--kernel and --vmlinux are mutually exclusive")}
			}
			var err error
			for _, p := range []*string{&rp.Rootfs, &rp.Vmlinux, &rp.Initrd} {
				if *p != "" {
					if *p, err = absPath(*p); err != nil {
						return err
					}
				}
			}
			var im api.Image
			if err := a.call(cmd.Context(), api.MethodImageRegister, rp, &im); err != nil {
				return err
			}
			return a.printImage(im, "registered", false)
		},
	}
	register.Flags().StringVar(&rp.Name, "name", "", "image name")
	register.Flags().StringVar(&rp.Rootfs, "rootfs", "", "ext4 root filesystem `file`")
	register.Flags().StringVar(&rp.Kernel, "kernel", "", "registered kernel `name` to boot (default: the built-in kernel)")
	register.Flags().StringVar(&rp.Vmlinux, "vmlinux", "", "kernel `file` (registered as kernel NAME-kernel)")
	register.Flags().StringVar(&rp.Initrd, "initrd", "", "initramfs `file` for --vmlinux")
	register.Flags().StringVar(&rp.Init, "init", "", "init= for the kernel command line (a path inside the image)")
	return register
}

// imagePromoteCmd is 'image promote'.
func (a *app) imagePromoteCmd() *cobra.Command {
	promote := &cobra.Command{
		Use:               "promote NAME",
		Short:             "Copy a registered image (and its kernel files) under banger's state dir",
		Example:           "  banger image promote mine",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeNames(api.MethodImageList),
		RunE: func(cmd *cobra.Command, args []string) error {
			var im api.Image
			if err := a.longCall(cmd.Context(), "promoting "+args[0], api.MethodImagePromote, api.ImageRef{Name: args[0]}, &im); err != nil {
				return err
			}
			return a.printImage(im, "promoted", false)
		},
	}
	return promote
}

// imageCacheCmd is 'image cache' and its 'prune'.
func (a *app) imageCacheCmd() *cobra.Command {
	cache := &cobra.Command{Use: "cache", Short: "Manage the OCI layer cache and derived images",
		Example: `  banger image cache prune --dry-run   # what would be deleted
  banger image cache prune`}
	var dryRun, pruneJSON bool
	prune := &cobra.Command{
		Use:   "prune",
		Short: "Delete the cached OCI layers, unused derived images and stale warm-start templates",
		Long: `Empty the OCI layer cache, and delete the derived images (built from a
repository's .banger/image.toml) that no VM uses, except the newest of each
repository, and the warm-start templates no start would use any more (their
image, banger, the VMM or the agent changed) and no VM stands on. The cache directory is renamed aside and recreated empty before
the old copy is deleted, so a pull in progress is not corrupted. Other
registered images are not affected. --dry-run only reports what would be
freed.`,
		Example: "  banger image cache prune --dry-run\n  banger image cache prune",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var r api.CachePruneResult
			if err := a.call(cmd.Context(), api.MethodImageCachePrune, api.CachePruneParams{DryRun: dryRun}, &r); err != nil {
				return err
			}
			if pruneJSON {
				return output.JSON(a.stdout, r)
			}
			verb := "freed"
			if r.DryRun {
				verb = "would free"
			}
			fmt.Fprintf(a.stdout, "%s %s across %d blob(s) in %s and %d derived image(s)\n", verb, config.FormatSize(r.FreedBytes), r.Blobs, r.Dir, len(r.Images))
			for _, n := range r.Images {
				fmt.Fprintf(a.stdout, "  %s\n", n)
			}
			if len(r.Templates) > 0 {
				fmt.Fprintf(a.stdout, "stale warm-start templates: %s\n", strings.Join(r.Templates, ", "))
			}
			return nil
		},
	}
	prune.Flags().BoolVar(&dryRun, "dry-run", false, "report what would be freed; delete nothing")
	prune.Flags().BoolVar(&pruneJSON, "json", false, "print JSON")
	cache.AddCommand(prune)
	return cache
}

// printImage reports an image a command made, or prints it as JSON.
func (a *app) printImage(im api.Image, verb string, asJSON bool) error {
	if asJSON {
		return output.JSON(a.stdout, im)
	}
	fmt.Fprintf(a.stdout, "%s %s (kernel %s, %s)\n", im.Name, verb, im.Kernel, mib(im.SizeBytes))
	return nil
}

func (a *app) imageWarmCmd() *cobra.Command {
	var (
		vcpu, memory int
		disk         string
		asJSON       bool
	)
	cmd := &cobra.Command{
		Use:   "warm NAME",
		Short: "Make the warm-start template of an image now (else the first cold start makes it)",
		Long: `Boot a VM of the image with the given resources (default: vm_defaults),
and park it the moment it is ready: its warm-start template. 'vm run' and
'vm create' of that shape then fork the template instead of booting
(docs/snapshots.md, "Warm starts"). The first cold start of a shape makes
its template in the background anyway; this makes it now, and waits.`,
		Example: "  banger image warm tiny\n  banger image warm debian-bookworm --vcpu 2 --memory 2048",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := api.ImageWarmParams{Name: args[0]}
			if cmd.Flags().Changed("vcpu") {
				p.VCPU = &vcpu
			}
			if cmd.Flags().Changed("memory") {
				p.MemoryMiB = &memory
			}
			if cmd.Flags().Changed("disk-size") {
				p.DiskSize = &disk
			}
			c, _, err := a.daemon(cmd.Context())
			if err != nil {
				return err
			}
			var r api.ImageWarmResult
			if err := a.withProgress(cmd.Context(), c, "warm "+args[0], func(ctx context.Context) error {
				return c.Call(ctx, api.MethodImageWarm, p, &r)
			}); err != nil {
				return err
			}
			if asJSON {
				return output.JSON(a.stdout, r)
			}
			verb := "made"
			if r.Existed {
				verb = "already there"
			}
			fmt.Fprintf(a.stdout, "%s: template %s %s\n", r.Image, r.Template, verb)
			return nil
		},
	}
	cmd.Flags().IntVar(&vcpu, "vcpu", 0, "vCPUs (default: vm_defaults.vcpu)")
	cmd.Flags().IntVar(&memory, "memory", 0, "memory in MiB (default: vm_defaults.memory_mib)")
	cmd.Flags().StringVar(&disk, "disk-size", "", "size of the /root work disk (default: vm_defaults.disk_size)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
