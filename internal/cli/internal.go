package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/banger-dev/banger/internal/guestbuild"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/sysinstall"
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
			if err := giveCacheToOwner(l); err != nil {
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

// giveCacheToOwner: root building guests for a system install hands the
// guestbuild caches to the owner user the daemon runs as.
func giveCacheToOwner(l paths.Layout) error {
	if os.Geteuid() != 0 || l.Mode != paths.System {
		return nil
	}
	m, err := sysinstall.ReadMeta(paths.InstallMetaPath())
	if err != nil {
		return nil // not installed: nothing to hand over
	}
	for _, d := range []string{"guest", "debian"} {
		root := filepath.Join(l.CacheDir, d)
		err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, m.OwnerUID, m.OwnerGID)
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("hand %s to %s: %w", root, m.OwnerUser, err)
		}
	}
	return nil
}
