package cli

import (
	"encoding/json"
	"fmt"

	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/banger-dev/banger/internal/guestbuild"
	"github.com/spf13/cobra"
)

// internalCmd holds diagnostics that are not part of the stable interface.
func (a *app) internalCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:    "internal",
		Short:  "Diagnostics (unstable)",
		Hidden: true,
	}
	cmd.AddCommand(&cobra.Command{
		Use:     "rpc METHOD [JSON-PARAMS]",
		Short:   "Call a daemon RPC method and print its result",
		Example: "  banger internal rpc ping\n  banger internal rpc daemon.operations.list",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := a.daemon(cmd.Context())
			if err != nil {
				return err
			}
			var params any
			if len(args) == 2 {
				if err := json.Unmarshal([]byte(args[1]), &params); err != nil {
					return usageError{fmt.Errorf("params are not JSON: %v", err)}
				}
			}
			var out json.RawMessage
			if err := c.Call(cmd.Context(), args[0], params, &out); err != nil {
				return err
			}
			var v any
			_ = json.Unmarshal(out, &v)
			return output.JSON(a.stdout, v)
		},
	})
	var image string
	buildGuest := &cobra.Command{
		Use:   "build-guest [--image NAME]",
		Short: "Build (or find cached) the guest kernel, initrd and an image's rootfs in the cache dir, without a daemon",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := a.layout()
			if err != nil {
				return err
			}
			if image == "" {
				cfg, err := a.loadConfig(l)
				if err != nil {
					return err
				}
				image = cfg.DefaultImage
			}
			build := guestbuild.Ensure
			switch image {
			case "tiny":
			case "debian-bookworm":
				build = guestbuild.EnsureDebian
			default:
				return usageError{fmt.Errorf("--image %q is not a built-in image (tiny, debian-bookworm)", image)}
			}
			art, err := build(cmd.Context(), guestbuild.Options{CacheDir: l.CacheDir, Progress: a.stderr})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "guest artifacts for %s ready: %s (kernel %s)\n", image, art.Dir, art.KernelVersion)
			return nil
		},
	}
	buildGuest.Flags().StringVar(&image, "image", "", "built-in image to build (default: default_image)")
	cmd.AddCommand(buildGuest)
	return cmd
}
