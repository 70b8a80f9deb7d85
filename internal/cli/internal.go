package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/guestbuild"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/securefs"
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
			build := guestbuild.Builtins[image]
			if build == nil {
				return usageError{fmt.Errorf("--image %q is not a built-in image (%s)", image, strings.Join(guestbuild.BuiltinNames(), ", "))}
			}
			art, err := buildGuestAsRoot(cmd.Context(), l, build, a.stderr)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "guest artifacts for %s ready: %s (kernel %s)\n", image, art.Dir, art.KernelVersion)
			return nil
		},
	}
	buildGuest.Flags().StringVar(&image, "image", "", "built-in image to build (default: default_image)")
	cmd.AddCommand(buildGuest)
	cmd.AddCommand(a.sshHelperCmds()...)
	return cmd
}

// buildGuestAsRoot builds a built-in guest where root's build runs in a
// system install: in a root-only cache (/var/cache/banger-root; mmdebstrap
// and the image tools then work only where no other user can redirect
// them), and hands the published artifacts to the owner's cache by copying
// them in through directory handles (securefs.CopyTreeTo). Outside a
// system install (or as the owner itself) it builds in place.
func buildGuestAsRoot(ctx context.Context, l paths.Layout, build func(context.Context, guestbuild.Options) (guestbuild.Artifacts, error), progress io.Writer) (guestbuild.Artifacts, error) {
	m, merr := sysinstall.ReadMeta(paths.InstallMetaPath())
	if os.Geteuid() != 0 || l.Mode != paths.System || merr != nil || m.OwnerUID == 0 {
		return build(ctx, guestbuild.Options{CacheDir: l.CacheDir, Progress: progress})
	}
	if err := os.MkdirAll(paths.SystemRootCacheDir, 0o700); err != nil {
		return guestbuild.Artifacts{}, err
	}
	if err := securefs.CheckRootOnly(paths.SystemRootCacheDir); err != nil {
		return guestbuild.Artifacts{}, err
	}
	art, err := build(ctx, guestbuild.Options{CacheDir: paths.SystemRootCacheDir, Progress: progress})
	if err != nil {
		return art, err
	}
	// Hand over each published directory the owner's daemon reads:
	// guest/<key> (kernel, initrd, tiny) and, for Debian, debian/<key>.
	handed := art
	for _, dir := range []string{filepath.Dir(art.Vmlinux), art.Dir} {
		rel, err := filepath.Rel(paths.SystemRootCacheDir, dir)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		parent, err := securefs.OpenOwnedDir(l.CacheDir, filepath.Dir(rel), m.OwnerUID, m.OwnerGID)
		if err != nil {
			return art, fmt.Errorf("hand the guest build to %s: %w", m.OwnerUser, err)
		}
		err = securefs.CopyTreeTo(dir, parent, filepath.Base(rel), m.OwnerUID, m.OwnerGID, func(out, in *os.File) error {
			_, err := disk.CloneFile(out, in)
			return err
		})
		parent.Close()
		if err != nil {
			return art, fmt.Errorf("hand the guest build to %s: %w", m.OwnerUser, err)
		}
	}
	re := func(p string) string {
		if p == "" {
			return ""
		}
		rel, err := filepath.Rel(paths.SystemRootCacheDir, p)
		if err != nil {
			return p
		}
		return filepath.Join(l.CacheDir, rel)
	}
	handed.Vmlinux, handed.Vmlinuz, handed.Initrd, handed.Rootfs, handed.Dir, handed.Manifest = re(art.Vmlinux), re(art.Vmlinuz), re(art.Initrd), re(art.Rootfs), re(art.Dir), re(art.Manifest)
	return handed, nil
}
