package updater

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/buildinfo"
	"github.com/banger-dev/banger/internal/sysinstall"
)

// fakeHost is the Host of the transaction tests. It records every call in
// order ("systemctl restart bangerd.service", "wait v2 30s", "run
// bin/banger system render-units", programs relative to root), returns the
// errors queued in fail for a call (one per call, then nil), answers
// programs with out, and models the daemon: a restart of bangerd.service
// runs whatever bangerd is installed at that moment, and WaitVersion fails
// unless that is the version asked for.
type fakeHost struct {
	root    string
	calls   []string
	fail    map[string][]error
	out     map[string]string
	hook    func(call string) // runs as each call is made
	running string            // the version the daemon runs
}

func (h *fakeHost) record(call string) error {
	h.calls = append(h.calls, call)
	if h.hook != nil {
		h.hook(call)
	}
	if q := h.fail[call]; len(q) > 0 {
		h.fail[call] = q[1:]
		return q[0]
	}
	return nil
}

func (h *fakeHost) Systemctl(_ context.Context, args ...string) error {
	err := h.record("systemctl " + strings.Join(args, " "))
	if err == nil && slices.Equal(args, []string{"restart", sysinstall.DaemonUnit}) {
		b, _ := os.ReadFile(filepath.Join(h.root, "bin", "bangerd"))
		h.running = strings.TrimPrefix(string(b), "bangerd ")
	}
	return err
}

func (h *fakeHost) WaitVersion(_ context.Context, version string, timeout time.Duration) error {
	if err := h.record(fmt.Sprintf("wait %s %v", version, timeout)); err != nil {
		return err
	}
	if h.running != version {
		return fmt.Errorf("daemon answers with %s, not %s", h.running, version)
	}
	return nil
}

func (h *fakeHost) Run(_ context.Context, stdout, _ io.Writer, program string, args ...string) error {
	rel, _ := filepath.Rel(h.root, program)
	call := strings.Join(append([]string{"run", rel}, args...), " ")
	err := h.record(call)
	stdout.Write([]byte(h.out[call]))
	return err
}

// exitStatus is a program's non-zero exit, as *exec.ExitError reports it.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }
func (e exitStatus) ExitCode() int { return int(e) }

// fixture is an installed v1 (binaries "<name> v1", units, install.toml)
// under a temporary root, v2 staged beside it, and a transaction to v2.
type fixture struct {
	root        string
	layout      sysinstall.Layout
	host        *fakeHost
	tx          *Transaction
	out, stderr bytes.Buffer
}

const (
	helperUnitV1 = "[Service]\nExecStart=helper v1\n"
	helperUnitV2 = "[Service]\nExecStart=helper v2\n"
	daemonUnit   = "[Service]\nExecStart=daemon\n"
)

func newFixture(t *testing.T) *fixture {
	t.Helper()
	root := t.TempDir()
	f := &fixture{root: root, layout: sysinstall.Layout{BinDir: filepath.Join(root, "bin"), LibDir: filepath.Join(root, "lib"),
		UnitDir: filepath.Join(root, "units"), MetaPath: filepath.Join(root, "etc", "install.toml")}}
	staged := map[string]string{}
	for _, b := range sysinstall.Binaries {
		write(t, f.layout.Path(b.Name), b.Name+" v1", 0o755)
		staged[b.Name] = filepath.Join(root, "staged", b.Name)
		write(t, staged[b.Name], b.Name+" v2", 0o755)
	}
	write(t, filepath.Join(f.layout.UnitDir, sysinstall.HelperUnit), helperUnitV1, 0o644)
	write(t, filepath.Join(f.layout.UnitDir, sysinstall.DaemonUnit), daemonUnit, 0o644)
	meta := sysinstall.Meta{OwnerUser: "owner", OwnerUID: 1000, Version: "v1"}
	if err := sysinstall.WriteMeta(f.layout.MetaPath, meta); err != nil {
		t.Fatal(err)
	}
	f.host = &fakeHost{root: root, running: "v1", fail: map[string][]error{}, out: map[string]string{
		"run bin/banger system render-units":  fmt.Sprintf(`{%q: %q, %q: %q}`, sysinstall.HelperUnit, helperUnitV2, sysinstall.DaemonUnit, daemonUnit),
		"run bin/banger system status --json": `{"installed": true, "healthy": true}`,
		"run bin/banger version --json":       `{"version": "v2", "commit": "c2", "built_at": "2026-01-02T03:04:05Z"}`,
	}}
	f.tx = &Transaction{Layout: f.layout, Host: f.host, From: "v1", To: "v2", Staged: staged, Meta: meta, Out: &f.out, Err: &f.stderr}
	return f
}

func write(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// assertInstalled checks every installed binary holds version and no
// .previous file is left, and the helper unit's text.
func (f *fixture) assertInstalled(t *testing.T, version, helperUnit string) {
	t.Helper()
	for _, b := range sysinstall.Binaries {
		p := f.layout.Path(b.Name)
		if got, err := os.ReadFile(p); err != nil || string(got) != b.Name+" "+version {
			t.Errorf("%s holds %q (%v), want %q", p, got, err, b.Name+" "+version)
		}
		if _, err := os.Lstat(p + ".previous"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s.previous left behind (%v)", p, err)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(f.layout.UnitDir, sysinstall.HelperUnit)); string(got) != helperUnit {
		t.Errorf("helper unit holds %q, want %q", got, helperUnit)
	}
	if got, _ := os.ReadFile(filepath.Join(f.layout.UnitDir, sysinstall.DaemonUnit)); string(got) != daemonUnit {
		t.Errorf("daemon unit holds %q", got)
	}
}

func (f *fixture) assertCalls(t *testing.T, want ...string) {
	t.Helper()
	if !slices.Equal(f.host.calls, want) {
		t.Errorf("calls:\n  %s\nwant:\n  %s", strings.Join(f.host.calls, "\n  "), strings.Join(want, "\n  "))
	}
}

func (f *fixture) metaVersion(t *testing.T) string {
	t.Helper()
	m, err := sysinstall.ReadMeta(f.layout.MetaPath)
	if err != nil {
		t.Fatal(err)
	}
	return m.Version
}

// The calls of an update up to its health gate.
var throughHealthGate = []string{
	"run bin/banger system render-units",
	"systemctl daemon-reload",
	"systemctl restart bangerd-root.service",
	"systemctl restart bangerd.service",
	"wait v2 30s",
	"run bin/banger system status --json",
}

// The calls of a rollback after the restarts (units were refreshed).
var rollbackRestart = []string{
	"systemctl daemon-reload",
	"systemctl reset-failed bangerd-root.service",
	"systemctl restart bangerd-root.service",
	"systemctl reset-failed bangerd.service",
	"systemctl restart bangerd.service",
	"wait v1 1m0s",
}

func TestApplySucceeds(t *testing.T) {
	f := newFixture(t)
	if err := f.tx.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.assertInstalled(t, "v2", helperUnitV2)
	f.assertCalls(t, append(slices.Clone(throughHealthGate),
		"run bin/banger version --json",
		"run bin/banger --system internal build-guest")...)
	m, err := sysinstall.ReadMeta(f.layout.MetaPath)
	if err != nil || m.Version != "v2" || m.Commit != "c2" || m.BuiltAt != "2026-01-02T03:04:05Z" || m.OwnerUser != "owner" {
		t.Errorf("install metadata %+v, %v", m, err)
	}
	want := "refreshed " + filepath.Join(f.layout.UnitDir, sysinstall.HelperUnit) + "\nupdated v1 → v2\n"
	if f.out.String() != want {
		t.Errorf("output %q, want %q", f.out.String(), want)
	}
}

func TestApplyHealthGateFailureRollsBackAndRestarts(t *testing.T) {
	f := newFixture(t)
	f.host.out["run bin/banger system status --json"] = `{"installed": true, "healthy": false}`
	err := f.tx.Apply(context.Background())
	want := `update to v2 failed: health gate: the new binaries report unhealthy services: {"installed": true, "healthy": false} (rolled back to v1)`
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	f.assertInstalled(t, "v1", helperUnitV1)
	f.assertCalls(t, append(slices.Clone(throughHealthGate), rollbackRestart...)...)
	if f.host.running != "v1" {
		t.Errorf("the daemon runs %s after the rollback", f.host.running)
	}
	if v := f.metaVersion(t); v != "v1" {
		t.Errorf("install metadata says %s", v)
	}
	if !strings.HasPrefix(f.out.String(), "refreshed ") || !strings.HasSuffix(f.out.String(), "update failed (health gate: the new binaries report unhealthy services: {\"installed\": true, \"healthy\": false}); rolling back to v1\n") {
		t.Errorf("output %q", f.out.String())
	}
}

func TestApplyRestartFailureRollsBack(t *testing.T) {
	f := newFixture(t)
	f.host.fail["systemctl restart bangerd.service"] = []error{errors.New("systemctl restart bangerd.service: exit status 1: job failed")}
	err := f.tx.Apply(context.Background())
	want := "update to v2 failed: restart daemon: systemctl restart bangerd.service: exit status 1: job failed (rolled back to v1)"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	f.assertInstalled(t, "v1", helperUnitV1)
	f.assertCalls(t, append(slices.Clone(throughHealthGate[:4]), rollbackRestart...)...)
}

// A daemon that comes back on the old version fails the wait: the rollback
// restarts the services on the old binaries, and then the wait passes.
func TestApplyWrongDaemonVersionRollsBack(t *testing.T) {
	f := newFixture(t)
	write(t, f.tx.Staged["bangerd"], "bangerd v1.9", 0o755)
	err := f.tx.Apply(context.Background())
	if err == nil || err.Error() != "update to v2 failed: wait daemon ready: daemon answers with v1.9, not v2 (rolled back to v1)" {
		t.Fatalf("err = %v", err)
	}
	f.assertCalls(t, append(slices.Clone(throughHealthGate[:5]), rollbackRestart...)...)
	if got, _ := os.ReadFile(f.layout.Path("bangerd")); string(got) != "bangerd v1" {
		t.Errorf("bangerd holds %q", got)
	}
}

// A failure before the restarts puts the files back and restarts nothing:
// the old services still run.
func TestApplySwapFailureRestoresWithoutRestart(t *testing.T) {
	f := newFixture(t)
	missing := f.tx.Staged["banger"]
	os.Remove(missing)
	err := f.tx.Apply(context.Background())
	want := fmt.Sprintf("update to v2 failed: swap %s: open %s: no such file or directory (rolled back to v1)", f.layout.Path("banger"), missing)
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	f.assertInstalled(t, "v1", helperUnitV1)
	f.assertCalls(t)
	if f.out.Len() != 0 {
		t.Errorf("output %q", f.out.String())
	}
}

// A rollback that fails is a *RollbackError naming the failure and the
// rollback's error, in one line; its repair steps name every swapped file.
func TestApplyRollbackRestartFailure(t *testing.T) {
	f := newFixture(t)
	f.host.fail["systemctl restart bangerd-root.service"] = []error{errors.New("helper failed"), errors.New("helper failed again")}
	err := f.tx.Apply(context.Background())
	var rb *RollbackError
	if !errors.As(err, &rb) {
		t.Fatalf("err = %v, want a *RollbackError", err)
	}
	if want := "update to v2 failed: restart helper: helper failed; the rollback did not complete: helper failed again"; err.Error() != want {
		t.Fatalf("err = %q\nwant %q", err, want)
	}
	f.assertInstalled(t, "v1", helperUnitV1) // the files were put back
	f.assertCalls(t, append(slices.Clone(throughHealthGate[:3]), rollbackRestart[:5]...)...)
	var steps bytes.Buffer
	rb.WriteRepairSteps(&steps)
	lines := strings.Split(strings.TrimSuffix(steps.String(), "\n"), "\n")
	if len(lines) != 10 || lines[0] != "banger: UPDATE FAILED AND THE ROLLBACK DID NOT COMPLETE. Repair by hand:" ||
		lines[1] != "  original failure: restart helper: helper failed" || lines[2] != "  rollback error:   helper failed again" ||
		lines[3] != fmt.Sprintf("  - if %s.previous exists: mv %s.previous %s", f.layout.Path("banger-agent"), f.layout.Path("banger-agent"), f.layout.Path("banger-agent")) ||
		lines[7] != "  - then: systemctl daemon-reload; systemctl reset-failed bangerd-root.service bangerd.service; systemctl restart bangerd-root.service bangerd.service" ||
		lines[9] != "  Running VMs were not touched." {
		t.Errorf("repair steps:\n%s", steps.String())
	}
}

// Files that cannot be put back stop the rollback before any restart.
func TestApplyRollbackRestoreFailure(t *testing.T) {
	f := newFixture(t)
	vmm := f.layout.Path("banger-vmm")
	f.host.out["run bin/banger system status --json"] = `{"healthy": false}`
	f.host.hook = func(call string) {
		if call == "run bin/banger system status --json" {
			os.Remove(vmm + ".previous")
		}
	}
	err := f.tx.Apply(context.Background())
	var rb *RollbackError
	if !errors.As(err, &rb) || len(rb.Errs) != 1 || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want a *RollbackError for the missing %s.previous", err, vmm)
	}
	if !strings.Contains(err.Error(), "health gate: the new binaries report unhealthy services") ||
		!strings.Contains(err.Error(), fmt.Sprintf("the rollback did not complete: restore %s from %s.previous: ", vmm, vmm)) {
		t.Fatalf("err = %v", err)
	}
	f.assertCalls(t, append(slices.Clone(throughHealthGate), "systemctl daemon-reload")...)
	if got, _ := os.ReadFile(f.layout.Path("bangerd")); string(got) != "bangerd v1" {
		t.Errorf("bangerd holds %q: the other files must still be put back", got)
	}
}

// The smoke suite's fault build leaves the restored services unrestarted
// (and must be caught by it); a real build never does.
func TestApplySmokeFaultSkipsRollbackRestart(t *testing.T) {
	defer func(old string) { buildinfo.SmokeFault = old }(buildinfo.SmokeFault)
	buildinfo.SmokeFault = "no-rollback-restart"
	f := newFixture(t)
	f.host.out["run bin/banger system status --json"] = `{"healthy": false}`
	err := f.tx.Apply(context.Background())
	if err == nil || !strings.HasSuffix(err.Error(), "(files rolled back to v1; services NOT restarted: smoke fault)") {
		t.Fatalf("err = %v", err)
	}
	f.assertCalls(t, append(slices.Clone(throughHealthGate), "systemctl daemon-reload")...)
}
