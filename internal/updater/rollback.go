package updater

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/atomicfile"
	"github.com/banger-dev/banger/internal/buildinfo"
	"github.com/banger-dev/banger/internal/sysinstall"
)

// RollbackError is an update that failed and whose rollback did not
// complete either: the machine needs the steps WriteRepairSteps prints.
type RollbackError struct {
	// To is the version the update was to.
	To string
	// Cause is the failure that started the rollback; Errs are what went
	// wrong putting the old release back.
	Cause error
	Errs  []error
	// Swapped are the installed paths whose .previous may still hold the
	// old binary.
	Swapped []string
}

func (e *RollbackError) Error() string {
	msgs := make([]string, len(e.Errs))
	for i, err := range e.Errs {
		msgs[i] = err.Error()
	}
	return fmt.Sprintf("update to %s failed: %v; the rollback did not complete: %s", e.To, e.Cause, strings.Join(msgs, "; "))
}

// Unwrap gives errors.Is and errors.As the cause and the rollback's errors.
func (e *RollbackError) Unwrap() []error { return append([]error{e.Cause}, e.Errs...) }

// WriteRepairSteps writes what to do by hand: the failure, the rollback's
// errors, and the commands that put the old release back and restart it.
func (e *RollbackError) WriteRepairSteps(w io.Writer) {
	fmt.Fprintf(w, "banger: UPDATE FAILED AND THE ROLLBACK DID NOT COMPLETE. Repair by hand:\n")
	fmt.Fprintf(w, "  original failure: %v\n", e.Cause)
	for _, err := range e.Errs {
		fmt.Fprintf(w, "  rollback error:   %v\n", err)
	}
	for _, p := range e.Swapped {
		prev := p + atomicfile.PreviousSuffix
		fmt.Fprintf(w, "  - if %s exists: mv %s %s\n", prev, prev, p)
	}
	fmt.Fprintf(w, "  - then: systemctl daemon-reload; systemctl reset-failed %s %s; systemctl restart %s %s\n",
		sysinstall.HelperUnit, sysinstall.DaemonUnit, sysinstall.HelperUnit, sysinstall.DaemonUnit)
	fmt.Fprintf(w, "  - check: banger system status; journalctl -u %s -u %s\n", sysinstall.HelperUnit, sysinstall.DaemonUnit)
	fmt.Fprintf(w, "  Running VMs were not touched.\n")
}

// restoreFiles puts back the swapped binaries (in reverse order) and the
// rewritten units, then reloads systemd if units changed.
func (t *Transaction) restoreFiles() []error {
	var errs []error
	for i := len(t.swapped) - 1; i >= 0; i-- {
		if err := atomicfile.RestorePrevious(t.swapped[i]); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range slices.Sorted(maps.Keys(t.units)) {
		old := t.units[p]
		var err error
		if old == nil {
			err = os.Remove(p)
		} else {
			err = atomicfile.WriteFile(p, old, 0o644)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("restore %s: %w", p, err))
		}
	}
	if len(t.units) > 0 {
		if err := t.Host.Systemctl(context.Background(), "daemon-reload"); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// rollbackAndWrap: a failure before any restart; the old daemon still runs.
func (t *Transaction) rollbackAndWrap(cause error) error {
	if errs := t.restoreFiles(); len(errs) > 0 {
		return t.incomplete(cause, errs)
	}
	return fmt.Errorf("update to %s failed: %w (rolled back to %s)", t.To, cause, t.From)
}

// rollbackAndRestart: a failure after the services were restarted on the new
// binaries; put the old ones back AND restart them, so the machine is never
// left with rolled-back files and a dead helper.
func (t *Transaction) rollbackAndRestart(cause error) error {
	t.say("update failed (%v); rolling back to %s", cause, t.From)
	if errs := t.restoreFiles(); len(errs) > 0 {
		return t.incomplete(cause, errs)
	}
	rctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if buildinfo.SmokeFault == "no-rollback-restart" {
		return fmt.Errorf("update to %s failed: %w (files rolled back to %s; services NOT restarted: smoke fault)", t.To, cause, t.From)
	}
	var errs []error
	for _, unit := range []string{sysinstall.HelperUnit, sysinstall.DaemonUnit} {
		_ = t.Host.Systemctl(rctx, "reset-failed", unit) // a crash loop may have hit the start limit
		if err := t.Host.Systemctl(rctx, "restart", unit); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		if err := t.Host.WaitVersion(rctx, t.From, 60*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return t.incomplete(cause, errs)
	}
	return fmt.Errorf("update to %s failed: %w (rolled back to %s)", t.To, cause, t.From)
}

func (t *Transaction) incomplete(cause error, errs []error) error {
	return &RollbackError{To: t.To, Cause: cause, Errs: errs, Swapped: slices.Clone(t.swapped)}
}
