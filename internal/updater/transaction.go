package updater

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/atomicfile"
	"github.com/banger-dev/banger/internal/buildinfo"
	"github.com/banger-dev/banger/internal/sysinstall"
)

// Transaction swaps a staged release in and restarts the services on it;
// any failure puts the old release back (Apply). A Transaction is used once.
type Transaction struct {
	Layout sysinstall.Layout
	Host   Host
	// From is the installed version, To the staged one.
	From, To string
	// Staged maps each binary of sysinstall.Binaries to its staged file.
	Staged map[string]string
	// Meta is the install metadata; on success it is written back with the
	// new build's version, commit and build time.
	Meta sysinstall.Meta
	// Out gets the progress lines and the default image build's output;
	// Err gets that build's errors.
	Out, Err io.Writer

	swapped []string          // installed paths whose .previous holds the old binary
	units   map[string][]byte // unit path → previous content (nil: absent) for units rewritten
}

// Apply swaps each binary atomically keeping <path>.previous (in
// sysinstall.Binaries order: the CLI last), rewrites the unit files the new
// banger renders differently (then daemon-reload), restarts the root helper
// then the daemon, waits for the daemon to answer with To, and runs the new
// `banger system status --json` as a health gate. A failure before the
// restarts restores the files (the old daemon still runs); one after them
// restores the files and units and resets and restarts both units on them
// too. Either error ends "(rolled back to <From>)"; a rollback that does not
// complete is a *RollbackError. Success refreshes the install metadata,
// removes the .previous files, and lets the new banger build its default
// image (a failure there only warns). Running VMs are never touched.
func (t *Transaction) Apply(ctx context.Context) error {
	for _, b := range sysinstall.Binaries {
		dst := t.Layout.Path(b.Name)
		if err := swapIn(t.Staged[b.Name], dst); err != nil {
			return t.rollbackAndWrap(fmt.Errorf("swap %s: %w", dst, err))
		}
		t.swapped = append(t.swapped, dst)
	}
	if err := t.refreshUnits(ctx); err != nil {
		return t.rollbackAndWrap(err)
	}
	// Restart, helper first; any failure from here restarts what it restores.
	steps := []struct {
		name string
		fn   func() error
	}{
		{"restart helper", func() error { return t.Host.Systemctl(ctx, "restart", sysinstall.HelperUnit) }},
		{"restart daemon", func() error { return t.Host.Systemctl(ctx, "restart", sysinstall.DaemonUnit) }},
		{"wait daemon ready", func() error { return t.Host.WaitVersion(ctx, t.To, 30*time.Second) }},
		{"health gate", func() error { return t.healthGate(ctx) }},
	}
	for _, s := range steps {
		if err := s.fn(); err != nil {
			return t.rollbackAndRestart(fmt.Errorf("%s: %w", s.name, err))
		}
	}
	t.commit(ctx)
	return nil
}

// commit makes the update stick: the install metadata names the new build,
// the .previous files go, and the new banger builds its default image.
func (t *Transaction) commit(ctx context.Context) {
	if out, err := t.output(ctx, t.Layout.Path("banger"), "version", "--json"); err == nil {
		var b buildinfo.Info
		if json.Unmarshal(out, &b) == nil {
			t.Meta.Version, t.Meta.Commit, t.Meta.BuiltAt = b.Version, b.Commit, b.BuiltAt
		}
	}
	if err := sysinstall.WriteMeta(t.Layout.MetaPath, t.Meta); err != nil {
		t.say("warning: could not refresh %s: %v", t.Layout.MetaPath, err)
	}
	for _, p := range t.swapped {
		_ = atomicfile.RemovePrevious(p)
	}
	t.say("updated %s → %s", t.From, t.To)
	t.refreshDefaultImage(ctx)
}

// refreshDefaultImage lets the new version build its default image, as
// root, while it can: the owner's daemon cannot run mmdebstrap, so a recipe
// that changed with the update would otherwise need a manual step. A
// published build is found at once; a failure only warns (the update
// stands).
func (t *Transaction) refreshDefaultImage(ctx context.Context) {
	if err := t.Host.Run(ctx, t.Out, t.Err, t.Layout.Path("banger"), "--system", "internal", "build-guest"); err != nil {
		t.say("warning: the default image was not refreshed (%v); run 'sudo banger internal build-guest' later", err)
	}
}

// swapIn replaces dst by src atomically, keeping dst as dst.previous.
func swapIn(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := atomicfile.KeepPrevious(dst); err != nil {
		return err
	}
	return atomicfile.WriteFile(dst, data, 0o755)
}

// refreshUnits rewrites the unit files when the new binary renders them
// differently (and remembers the old text for a rollback).
func (t *Transaction) refreshUnits(ctx context.Context) error {
	out, err := t.output(ctx, t.Layout.Path("banger"), "system", "render-units")
	if err != nil {
		return fmt.Errorf("render units with the new binary: %v", err)
	}
	var units map[string]string
	if err := json.Unmarshal(out, &units); err != nil {
		return fmt.Errorf("render units: %v", err)
	}
	t.units = map[string][]byte{}
	changed := false
	for _, name := range slices.Sorted(maps.Keys(units)) {
		p := filepath.Join(t.Layout.UnitDir, name)
		old, err := os.ReadFile(p)
		if err == nil && string(old) == units[name] {
			continue
		}
		t.units[p] = old
		if err := atomicfile.WriteFile(p, []byte(units[name]), 0o644); err != nil {
			return err
		}
		changed = true
		t.say("refreshed %s", p)
	}
	if changed {
		return t.Host.Systemctl(ctx, "daemon-reload")
	}
	return nil
}

// healthGate runs the newly installed CLI's health check.
func (t *Transaction) healthGate(ctx context.Context) error {
	banger := t.Layout.Path("banger")
	out, err := t.output(ctx, banger, "system", "status", "--json")
	if err != nil {
		return fmt.Errorf("%s system status: %v: %s", banger, err, strings.TrimSpace(string(out)))
	}
	var st struct {
		Healthy bool `json:"healthy"`
	}
	if err := json.Unmarshal(out, &st); err != nil || !st.Healthy {
		return fmt.Errorf("the new binaries report unhealthy services: %s", strings.TrimSpace(string(out)))
	}
	return nil
}

// output runs program through the host and returns its standard output
// (what it wrote before failing, on an error); its standard error is
// discarded.
func (t *Transaction) output(ctx context.Context, program string, args ...string) ([]byte, error) {
	var out bytes.Buffer
	err := t.Host.Run(ctx, &out, io.Discard, program, args...)
	return out.Bytes(), err
}

func (t *Transaction) say(format string, args ...any) { fmt.Fprintf(t.Out, format+"\n", args...) }
