package vm

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/privops"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmm"
)

// Reconcile checks every VM: a live VMM (pidfile, identity, answering
// API, asked through the helper) is re-adopted untouched; a dead one is
// cleaned up (tap, NAT rules, runtime files) and marked stopped with the
// reason; a VM whose create was interrupted before its disks were complete
// is removed. Leftover taps and VM directories with no record are removed
// and logged. It holds the operation lock exclusively, so no create or
// start is half way through while it judges.
func (s *Service) Reconcile(ctx context.Context) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	log := logging.From(ctx)
	recs, err := s.Store.ListVMs(ctx)
	if err != nil {
		log.Error("reconcile: list vms", "error", err)
		return
	}
	known := map[string]bool{} // VM directories that stay
	taps := map[string]bool{}  // taps that stay
	for _, r := range recs {
		keepDir, keepTap := s.reconcileVM(ctx, r.ID)
		if keepDir {
			known[r.ID] = true
		}
		if keepTap != "" {
			taps[keepTap] = true
		}
	}
	s.removeLeftoverTaps(ctx, taps)
	s.removeUnrecordedDirs(ctx, known)
}

// reconcileVM judges one VM, under its lock (see Reconcile). It reports
// whether the VM's directory stays, and the tap that stays with it ("" for
// none).
func (s *Service) reconcileVM(ctx context.Context, id string) (keepDir bool, keepTap string) {
	log := logging.From(ctx)
	unlock := s.lockVMHeld(id)
	defer unlock()
	rec, err := s.Store.GetVM(ctx, id)
	if err != nil {
		return false, ""
	}
	if rec.State == api.StateCreated && rec.Runtime.CloneMethod == "" {
		// Its create never finished: nothing of it is usable.
		log.Warn("reconcile: removing a VM whose create was interrupted", "vm", rec.Name)
		if err := s.delete(ctx, rec); err != nil {
			log.Warn("reconcile: remove interrupted VM", "vm", rec.Name, "error", err)
			return true, ""
		}
		return false, ""
	}
	st, err := s.Ops.StatusVMM(ctx, privops.VMReq{ID: rec.ID})
	live := err == nil && st.PID > 0
	switch {
	case rec.State == api.StateParked && !live:
		s.keepParked(ctx, rec)
		return true, rec.Runtime.Tap
	case live && rec.State == api.StateStarting:
		s.stopInterruptedStart(ctx, rec, st.PID)
		return true, ""
	case live:
		s.readopt(ctx, rec, st)
		return true, rec.Runtime.Tap
	}
	s.markGone(ctx, rec, st, err)
	return true, ""
}

// keepParked keeps a parked VM with no VMM, as none is expected: its
// snapshot and disks wait in its directory, and its tap (which the
// snapshot names) stays, pinned again.
func (s *Service) keepParked(ctx context.Context, rec store.VMRecord) {
	log := logging.From(ctx)
	if err := s.Ops.CreateTap(ctx, s.tapReq(rec)); err != nil {
		log.Warn("reconcile: pin a parked VM's tap", "vm", rec.Name, "error", err)
	}
	log.Info("reconcile: parked VM kept", "vm", rec.Name)
}

// stopInterruptedStart stops a VM whose start was interrupted before the
// guest's host keys were pinned: stop it cleanly rather than adopt a VM
// banger cannot trust.
func (s *Service) stopInterruptedStart(ctx context.Context, rec store.VMRecord, pid int) {
	log := logging.From(ctx)
	log.Warn("reconcile: stopping a VM whose start was interrupted", "vm", rec.Name, "pid", pid)
	_ = s.Ops.KillVMM(ctx, privops.KillReq{ID: rec.ID, Signal: "KILL"})
	s.waitGone(ctx, pid, 10*time.Second)
	if _, err := s.cleanup(ctx, rec, "the daemon stopped while the VM was starting; start it again"); err != nil {
		log.Warn("reconcile: cleanup", "vm", rec.Name, "error", err)
	}
}

// readopt re-adopts a VM whose VMM (st) is alive, recording its pid and
// state (paused, e.g. when the daemon died during a park) when they
// changed.
func (s *Service) readopt(ctx context.Context, rec store.VMRecord, st privops.VMMStatus) {
	log := logging.From(ctx)
	// Re-pin (idempotent): a helper of an older build left the tap
	// unpinned, and an unpinned tap sends nothing.
	if err := s.Ops.CreateTap(ctx, s.tapReq(rec)); err != nil {
		log.Warn("reconcile: pin tap", "vm", rec.Name, "error", err)
	}
	want := api.StateRunning
	if st.State == "Paused" {
		want = api.StatePaused // e.g. the daemon died during a park
	}
	if rec.Runtime.PID != st.PID || (rec.State != want && rec.State != api.StateError) {
		rec.Runtime.PID = st.PID
		rec.State = want
		if rec.Runtime.StartedAt == "" {
			rec.Runtime.StartedAt = now()
		}
		_ = s.Store.UpdateVM(ctx, rec)
	}
	log.Info("reconcile: re-adopted running VM", "vm", rec.Name, "pid", st.PID)
}

// markGone cleans up after a VM whose VMM is gone (st and statusErr say
// why) and marks it stopped with the reason; a VM that was already
// stopped keeps its own.
func (s *Service) markGone(ctx context.Context, rec store.VMRecord, st privops.VMMStatus, statusErr error) {
	log := logging.From(ctx)
	reason := "the VMM was gone when banger checked"
	if statusErr != nil {
		reason += " (" + statusErr.Error() + ")"
	} else if st.Reason != "" {
		reason += " (" + st.Reason + ")"
	}
	switch rec.State {
	case api.StateRunning, api.StateStarting, api.StateStopping, api.StateError, api.StatePaused:
		log.Warn("reconcile: VM marked stopped", "vm", rec.Name, "reason", reason)
	default:
		reason = rec.Runtime.StopReason // already stopped: keep why
	}
	// Idempotent: a tap or NAT rule left by a daemon killed mid-start
	// goes too.
	if _, err := s.cleanup(ctx, rec, reason); err != nil {
		log.Warn("reconcile: cleanup", "vm", rec.Name, "error", err)
	}
}

// removeLeftoverTaps removes the taps banger made that no VM keeps.
func (s *Service) removeLeftoverTaps(ctx context.Context, keep map[string]bool) {
	log := logging.From(ctx)
	list, err := s.Ops.ListTaps(ctx)
	if err != nil {
		log.Warn("reconcile: list taps", "error", err)
		return
	}
	for _, t := range list {
		if !keep[t] {
			log.Warn("reconcile: removing leftover tap", "tap", t)
			_ = s.Ops.DeleteTap(ctx, privops.TapReq{Name: t})
		}
	}
}

// removeUnrecordedDirs removes the VM directories no kept record names,
// killing a VMM still running in one first.
func (s *Service) removeUnrecordedDirs(ctx context.Context, known map[string]bool) {
	log := logging.From(ctx)
	entries, _ := os.ReadDir(s.Layout.VMsDir())
	for _, e := range entries {
		if !e.IsDir() || known[e.Name()] {
			continue
		}
		p := filepath.Join(s.Layout.VMsDir(), e.Name())
		if st, err := s.Ops.StatusVMM(ctx, privops.VMReq{ID: e.Name()}); err == nil && st.PID > 0 {
			log.Warn("reconcile: unrecorded VM directory has a live VMM; killing it", "dir", p, "pid", st.PID)
			_ = s.Ops.KillVMM(ctx, privops.KillReq{ID: e.Name(), Signal: "KILL"})
			s.waitGone(ctx, st.PID, 5*time.Second)
		}
		log.Warn("reconcile: removing unrecorded VM directory", "dir", p)
		_ = s.Ops.RemoveVMDir(ctx, privops.VMReq{ID: e.Name()})
	}
}

// Monitor notices VMMs that exit while the daemon runs (a guest reboot or
// power-off, or a kill behind banger's back) and cleans up after them. It
// also reconciles when the root helper restarts.
func (s *Service) Monitor(ctx context.Context, helperID func(context.Context) string) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	lastHelper := ""
	if helperID != nil {
		lastHelper = helperID(ctx)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if helperID != nil {
			if id := helperID(ctx); id != "" && id != lastHelper {
				if lastHelper != "" {
					logging.From(ctx).Info("root helper restarted; reconciling", "helper", id)
					s.Reconcile(ctx)
				}
				lastHelper = id
			}
		}
		recs, err := s.Store.ListVMs(ctx)
		if err != nil {
			continue
		}
		s.CapSerialLogs(ctx, recs)
		s.autoPark(ctx, recs) // auto_park_after: parks idle VMs (autopark.go)
		for _, r := range recs {
			if (r.State != api.StateRunning && r.State != api.StateError && r.State != api.StatePaused) || r.Runtime.PID == 0 || vmm.Alive(r.Runtime.PID) {
				continue
			}
			s.mu.Lock()
			l := s.locks[r.ID]
			s.mu.Unlock()
			if l != nil && !l.TryLock() {
				continue // an operation is in progress on it
			}
			rec, err := s.Store.GetVM(ctx, r.ID)
			if err == nil && (rec.State == api.StateRunning || rec.State == api.StateError || rec.State == api.StatePaused) && rec.Runtime.PID != 0 && !vmm.Alive(rec.Runtime.PID) {
				reason := "the VMM exited (guest reboot or power-off, or killed outside banger)"
				logging.From(ctx).Warn("vm stopped behind banger's back", "vm", rec.Name, "pid", rec.Runtime.PID)
				_, _ = s.cleanup(ctx, rec, reason)
			}
			if l != nil {
				l.Unlock()
			}
		}
	}
}
