package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/buildinfo"
	"github.com/banger-dev/banger/internal/client"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/sysinstall"
	"github.com/banger-dev/banger/internal/trust"
	"github.com/banger-dev/banger/internal/updater"
	"github.com/spf13/cobra"
)

type updateFlags struct {
	check, dryRun, force bool
	to                   string
	manifestURL, pubKey  string
}

func (a *app) updateCmd() *cobra.Command {
	var f updateFlags
	cmd := &cobra.Command{
		Use:   "update [--check] [--to vX.Y.Z] [--dry-run] [--force]",
		Short: "Update banger from a signed release; running VMs keep running",
		Long: `Update banger from a signed release.

The release manifest is signed with banger's release key (verified before it
is parsed), expires, and may not be older than the newest one this host
accepted (so a mirror cannot freeze it on an old release). It names each
release's tarball, SHA256SUMS and its signature. The signature (ECDSA P-256
over SHA256SUMS, cosign sign-blob format) is checked before any hash is
trusted; the tarball is checked while it streams and staged in a root-only
directory, and its binaries are run before anything is swapped. Then the binaries are swapped (the old ones kept as .previous), the
root helper and the daemon restarted, and the new 'banger system status'
must report both healthy. Any failure puts the old binaries back and
restarts them. Running VMs are never stopped.`,
		Example: `  banger update --check
  sudo banger update
  sudo banger update --to v0.2.0 --dry-run`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runUpdate(cmd.Context(), f, cmd.Flags().Changed("to"))
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.check, "check", false, "only say whether an update is available (no root needed)")
	fl.StringVar(&f.to, "to", "", "update (or, explicitly, downgrade) to this version instead of the latest stable")
	fl.BoolVar(&f.dryRun, "dry-run", false, "download, verify and stage, then stop: nothing is swapped")
	fl.BoolVar(&f.force, "force", false, "update even while daemon operations are in flight, or to the installed version")
	fl.StringVar(&f.manifestURL, "manifest-url", "", "release manifest URL (testing)")
	fl.StringVar(&f.pubKey, "pubkey-file", "", "release public key PEM (testing)")
	_ = fl.MarkHidden("manifest-url")
	_ = fl.MarkHidden("pubkey-file")
	return cmd
}

func (a *app) say(format string, args ...any) { fmt.Fprintf(a.stdout, format+"\n", args...) }

func (a *app) runUpdate(ctx context.Context, f updateFlags, toGiven bool) error {
	hc := &http.Client{Timeout: 10 * time.Minute}
	// The manifest is signed: verified, checked for expiry and against the
	// newest one this host accepted (recorded by root only, never by --check).
	mkey, err := trust.PublicKey(f.pubKey)
	if err != nil {
		return err
	}
	mc := updater.ManifestCheck{PublicKeyPEM: mkey, StatePath: updater.StatePathFor(paths.InstallMetaPath()),
		Record: !f.check && os.Geteuid() == 0 && paths.Installed()}
	var m *updater.Manifest
	if f.manifestURL != "" {
		m, err = updater.FetchManifestFrom(ctx, hc, f.manifestURL, mc)
	} else {
		m, err = updater.FetchManifest(ctx, hc, mc)
	}
	if err != nil {
		return fmt.Errorf("release manifest: %w", err)
	}
	rel, err := m.Resolve(f.to)
	if err != nil {
		return err
	}
	current := buildinfo.Version
	meta, metaErr := sysinstall.ReadMeta(paths.InstallMetaPath())
	if metaErr == nil {
		current = meta.Version
	}
	if f.check {
		if rel.Version == current {
			a.say("up to date (%s)", current)
		} else {
			a.say("update available: %s → %s", current, rel.Version)
		}
		return nil
	}
	if os.Geteuid() != 0 {
		return errors.New("update needs root (it replaces binaries and restarts the services); run: sudo banger update")
	}
	if metaErr != nil {
		return fmt.Errorf("banger is not installed as a system service (%v); see 'banger system install --help'", metaErr)
	}
	if rel.Version == current && !f.force {
		a.say("already at %s; nothing to do (--force reinstalls it)", current)
		return nil
	}
	if c, err := updater.CompareVersions(rel.Version, current); err == nil && c < 0 && !toGiven {
		return fmt.Errorf("%s is older than the installed %s; name it with --to to downgrade", rel.Version, current)
	} else if err != nil && !toGiven {
		return fmt.Errorf("cannot order %s against the installed %s (%v); name the version with --to", rel.Version, current, err)
	}
	if err := refuseWhileBusy(ctx, f.force); err != nil {
		return err
	}
	host := updater.SystemHost{}
	staged, err := updater.Prepare(ctx, hc, rel, mkey, paths.SystemRootCacheDir, host, a.stdout)
	if err != nil {
		return err
	}
	defer staged.Remove()
	if f.dryRun {
		a.say("dry run: %s → %s verified and staged; nothing swapped", current, rel.Version)
		return nil
	}
	tx := &updater.Transaction{Layout: sysinstall.DefaultLayout(), Host: host, From: current, To: rel.Version,
		Staged: staged.Binaries, Meta: meta, Out: a.stdout, Err: a.stderr}
	err = tx.Apply(ctx)
	var rb *updater.RollbackError
	if errors.As(err, &rb) {
		rb.WriteRepairSteps(a.stderr)
		return &ExitCodeError{Code: ExitFailure}
	}
	return err
}

// refuseWhileBusy refuses an update while the daemon has operations in
// flight, unless forced.
func refuseWhileBusy(ctx context.Context, force bool) error {
	var ops []api.Operation
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	oerr := client.New(paths.SystemLayout().SocketPath()).Call(octx, api.MethodOperationsList, nil, &ops)
	cancel()
	if oerr == nil && len(ops) > 0 && !force {
		names := []string{}
		for _, o := range ops {
			names = append(names, o.Method)
		}
		return fmt.Errorf("%d daemon operation(s) in flight (%s); retry when they finish, or use --force", len(ops), strings.Join(names, ", "))
	}
	return nil
}
