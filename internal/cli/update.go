package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/buildinfo"
	"github.com/banger-dev/banger/internal/client"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/securefs"
	"github.com/banger-dev/banger/internal/sysinstall"
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
	mkey, err := updater.PublicKey(f.pubKey)
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
	// Refuse while the daemon is working, unless forced.
	var ops []api.Operation
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	oerr := client.New(paths.SystemLayout().SocketPath()).Call(octx, api.MethodOperationsList, nil, &ops)
	cancel()
	if oerr == nil && len(ops) > 0 && !f.force {
		names := []string{}
		for _, o := range ops {
			names = append(names, o.Method)
		}
		return fmt.Errorf("%d daemon operation(s) in flight (%s); retry when they finish, or use --force", len(ops), strings.Join(names, ", "))
	}
	sums, err := updater.FetchAndVerifySignatureWithKey(ctx, hc, rel, mkey)
	if err != nil {
		return err
	}
	sum, err := rel.TarballSHA256(sums)
	if err != nil {
		return err
	}
	// Download, stage, sanity-run and install only where no other uid can
	// reach: the owner owns /var/cache/banger, so an update staged there
	// could be swapped between the check and the install.
	work, err := updateWorkDir(paths.SystemRootCacheDir)
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	tarball := filepath.Join(work, rel.TarballName())
	a.say("downloading %s", rel.TarballURL)
	if err := updater.DownloadVerified(ctx, hc, rel.TarballURL, sum, tarball); err != nil {
		return err
	}
	defer os.Remove(tarball)
	stageDir := filepath.Join(work, "stage")
	staged, err := updater.Stage(tarball, stageDir, updater.ReleaseBinaries)
	if err != nil {
		return err
	}
	defer os.RemoveAll(stageDir)
	if err := securefs.CheckRootOnly(stageDir); err != nil {
		return fmt.Errorf("staged release: %w", err)
	}
	if err := sanityCheck(ctx, staged, rel.Version); err != nil {
		return err
	}
	if f.dryRun {
		a.say("dry run: %s → %s verified and staged; nothing swapped", current, rel.Version)
		return nil
	}
	u := &updateTx{a: a, layout: sysinstall.DefaultLayout(), sd: sysinstall.ExecSystemd{}, from: current, to: rel.Version, staged: staged, meta: meta}
	return u.apply(ctx)
}

// updateWorkDir makes a fresh directory for one update below root (root's
// own cache), after checking that only root can change anything on the
// way there (securefs.CheckRootOnly).
func updateWorkDir(root string) (string, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", err
	}
	if err := securefs.CheckRootOnly(root); err != nil {
		return "", fmt.Errorf("update work dir: %w", err)
	}
	return os.MkdirTemp(root, "update-")
}

// sanityCheck runs the staged binaries: banger --version must name the
// target; bangerd --check-migrations --system must exit 0 or 1.
func sanityCheck(ctx context.Context, staged map[string]string, version string) error {
	out, err := exec.CommandContext(ctx, staged["banger"], "--version").Output()
	if err != nil {
		return fmt.Errorf("staged banger --version failed: %v", err)
	}
	if !strings.Contains(string(out), " "+version+" ") {
		return fmt.Errorf("staged banger reports %q, not %s", strings.TrimSpace(string(out)), version)
	}
	cmd := exec.CommandContext(ctx, staged["bangerd"], "--check-migrations", "--system")
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err = cmd.Run()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 1) {
		return fmt.Errorf("staged bangerd refuses this database: %s", strings.TrimSpace(buf.String()))
	}
	return nil
}

// updateTx is one swap-restart-verify transaction with its rollback.
type updateTx struct {
	a        *app
	layout   sysinstall.Layout
	sd       sysinstall.Systemd
	from, to string
	staged   map[string]string
	meta     sysinstall.Meta
	swapped  []string          // installed paths whose .previous holds the old binary
	units    map[string][]byte // unit path → previous content (nil: absent) for units rewritten
}

func (u *updateTx) apply(ctx context.Context) error {
	// Swap, CLI last.
	for _, b := range sysinstall.Binaries {
		dst := u.layout.Path(b.Name)
		if err := swapIn(u.staged[b.Name], dst); err != nil {
			return u.rollbackAndWrap(fmt.Errorf("swap %s: %w", dst, err))
		}
		u.swapped = append(u.swapped, dst)
	}
	if err := u.refreshUnits(ctx); err != nil {
		return u.rollbackAndWrap(err)
	}
	// Restart, helper first; any failure from here restarts what it restores.
	steps := []struct {
		name string
		fn   func() error
	}{
		{"restart helper", func() error { return u.sd.Systemctl(ctx, "restart", sysinstall.HelperUnit) }},
		{"restart daemon", func() error { return u.sd.Systemctl(ctx, "restart", sysinstall.DaemonUnit) }},
		{"wait daemon ready", func() error { return waitVersion(ctx, u.to, 30*time.Second) }},
		{"health gate", func() error { return healthGate(ctx, u.layout.Path("banger")) }},
	}
	for _, s := range steps {
		if err := s.fn(); err != nil {
			return u.rollbackAndRestart(ctx, fmt.Errorf("%s: %w", s.name, err))
		}
	}
	// Commit.
	out, err := exec.CommandContext(ctx, u.layout.Path("banger"), "version", "--json").Output()
	if err == nil {
		var b buildinfo.Info
		if json.Unmarshal(out, &b) == nil {
			u.meta.Version, u.meta.Commit, u.meta.BuiltAt = b.Version, b.Commit, b.BuiltAt
		}
	}
	if err := sysinstall.WriteMeta(u.layout.MetaPath, u.meta); err != nil {
		u.a.say("warning: could not refresh %s: %v", u.layout.MetaPath, err)
	}
	for _, p := range u.swapped {
		os.Remove(p + ".previous")
	}
	u.a.say("updated %s → %s", u.from, u.to)
	u.refreshDefaultImage(ctx)
	return nil
}

// refreshDefaultImage lets the new version build its default image, as
// root, while it can: the owner's daemon cannot run mmdebstrap, so a recipe
// that changed with the update would otherwise need a manual step. A
// published build is found at once; a failure only warns (the update
// stands).
func (u *updateTx) refreshDefaultImage(ctx context.Context) {
	cmd := exec.CommandContext(ctx, u.layout.Path("banger"), "--system", "internal", "build-guest")
	cmd.Stdout, cmd.Stderr = u.a.stdout, u.a.stderr
	if err := cmd.Run(); err != nil {
		u.a.say("warning: the default image was not refreshed (%v); run 'sudo banger internal build-guest' later", err)
	}
}

// swapIn replaces dst by src atomically, keeping dst as dst.previous.
func swapIn(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	prev := dst + ".previous"
	os.Remove(prev)
	if err := os.Link(dst, prev); err != nil {
		return fmt.Errorf("keep %s: %w", prev, err)
	}
	return sysinstall.WriteFileAtomic(dst, data, 0o755)
}

// refreshUnits rewrites the unit files when the new binary renders them
// differently (and remembers the old text for a rollback).
func (u *updateTx) refreshUnits(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, u.layout.Path("banger"), "system", "render-units").Output()
	if err != nil {
		return fmt.Errorf("render units with the new binary: %v", err)
	}
	var units map[string]string
	if err := json.Unmarshal(out, &units); err != nil {
		return fmt.Errorf("render units: %v", err)
	}
	u.units = map[string][]byte{}
	changed := false
	for name, text := range units {
		p := filepath.Join(u.layout.UnitDir, name)
		old, err := os.ReadFile(p)
		if err == nil && string(old) == text {
			continue
		}
		u.units[p] = old
		if err := sysinstall.WriteFileAtomic(p, []byte(text), 0o644); err != nil {
			return err
		}
		changed = true
		u.a.say("refreshed %s", p)
	}
	if changed {
		return u.sd.Systemctl(ctx, "daemon-reload")
	}
	return nil
}

func (u *updateTx) restoreFiles() []error {
	var errs []error
	for i := len(u.swapped) - 1; i >= 0; i-- {
		p := u.swapped[i]
		if err := os.Rename(p+".previous", p); err != nil {
			errs = append(errs, fmt.Errorf("restore %s from %s.previous: %w", p, p, err))
		}
	}
	for p, old := range u.units {
		var err error
		if old == nil {
			err = os.Remove(p)
		} else {
			err = sysinstall.WriteFileAtomic(p, old, 0o644)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("restore %s: %w", p, err))
		}
	}
	if len(u.units) > 0 {
		if err := u.sd.Systemctl(context.Background(), "daemon-reload"); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// rollbackAndWrap: a failure before any restart; the old daemon still runs.
func (u *updateTx) rollbackAndWrap(cause error) error {
	if errs := u.restoreFiles(); len(errs) > 0 {
		return u.manual(cause, errs)
	}
	return fmt.Errorf("update to %s failed: %w (rolled back to %s)", u.to, cause, u.from)
}

// rollbackAndRestart: a failure after the services were restarted on the new
// binaries; put the old ones back AND restart them, so the machine is never
// left with rolled-back files and a dead helper.
func (u *updateTx) rollbackAndRestart(ctx context.Context, cause error) error {
	u.a.say("update failed (%v); rolling back to %s", cause, u.from)
	if errs := u.restoreFiles(); len(errs) > 0 {
		return u.manual(cause, errs)
	}
	rctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if buildinfo.SmokeFault == "no-rollback-restart" {
		return fmt.Errorf("update to %s failed: %w (files rolled back to %s; services NOT restarted: smoke fault)", u.to, cause, u.from)
	}
	var errs []error
	for _, unit := range []string{sysinstall.HelperUnit, sysinstall.DaemonUnit} {
		_ = u.sd.Systemctl(rctx, "reset-failed", unit) // a crash loop may have hit the start limit
		if err := u.sd.Systemctl(rctx, "restart", unit); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		if err := waitVersion(rctx, u.from, 60*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return u.manual(cause, errs)
	}
	return fmt.Errorf("update to %s failed: %w (rolled back to %s)", u.to, cause, u.from)
}

func (u *updateTx) manual(cause error, errs []error) error {
	w := u.a.stderr
	fmt.Fprintf(w, "banger: UPDATE FAILED AND THE ROLLBACK DID NOT COMPLETE. Repair by hand:\n")
	fmt.Fprintf(w, "  original failure: %v\n", cause)
	for _, e := range errs {
		fmt.Fprintf(w, "  rollback error:   %v\n", e)
	}
	for _, p := range u.swapped {
		fmt.Fprintf(w, "  - if %s.previous exists: mv %s.previous %s\n", p, p, p)
	}
	fmt.Fprintf(w, "  - then: systemctl daemon-reload; systemctl reset-failed %s %s; systemctl restart %s %s\n",
		sysinstall.HelperUnit, sysinstall.DaemonUnit, sysinstall.HelperUnit, sysinstall.DaemonUnit)
	fmt.Fprintf(w, "  - check: banger system status; journalctl -u %s -u %s\n", sysinstall.HelperUnit, sysinstall.DaemonUnit)
	fmt.Fprintf(w, "  Running VMs were not touched.\n")
	return &ExitCodeError{Code: ExitFailure}
}

// waitVersion waits until both sockets answer and the daemon runs version.
func waitVersion(ctx context.Context, version string, timeout time.Duration) error {
	if err := sysinstall.WaitReady(ctx, timeout); err != nil {
		return err
	}
	var p api.PingResult
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := client.New(paths.SystemLayout().SocketPath()).Call(pctx, api.MethodPing, nil, &p); err != nil {
		return err
	}
	if p.Build.Version != version {
		return fmt.Errorf("daemon answers with %s, not %s", p.Build.Version, version)
	}
	return nil
}

// healthGate runs the newly installed CLI's health check.
func healthGate(ctx context.Context, banger string) error {
	cmd := exec.CommandContext(ctx, banger, "system", "status", "--json")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, io.Discard
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s system status: %v: %s", banger, err, strings.TrimSpace(out.String()))
	}
	var st SystemStatus
	if err := json.Unmarshal(out.Bytes(), &st); err != nil || !st.Healthy {
		return fmt.Errorf("the new binaries report unhealthy services: %s", strings.TrimSpace(out.String()))
	}
	return nil
}
